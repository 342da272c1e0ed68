/* metrics.c - see metrics.h. */
#include "metrics.h"

#include <errno.h>
#include <stdatomic.h>
#include <string.h>

#include "hub.h"
#include "worker.h"

/* The counters of every started worker, summed. */
static void sum_workers(server_t *srv, worker_stats_t *sum, int *nworkers, int *redis_up) {
  memset(sum, 0, sizeof(*sum));
  *nworkers = 0;
  *redis_up = 0;
  for (int i = 0; i < srv->cfg.workers; i++) {
    worker_t *w = __atomic_load_n(&srv->workers[i], __ATOMIC_ACQUIRE);
    if (w == NULL) continue;
    (*nworkers)++;
    sum->subscribers += STAT_GET(w, subscribers);
    sum->streams += STAT_GET(w, streams);
    sum->delivered += STAT_GET(w, delivered);
    sum->slow_drops += STAT_GET(w, slow_drops);
    sum->requests += STAT_GET(w, requests);
    sum->bytes_out += STAT_GET(w, bytes_out);
    sum->handler_errors += STAT_GET(w, handler_errors);
    sum->budget_kills += STAT_GET(w, budget_kills);
    sum->upstream_requests += STAT_GET(w, upstream_requests);
    sum->upstream_errors += STAT_GET(w, upstream_errors);
    sum->ttfb_count += STAT_GET(w, ttfb_count);
    sum->ttfb_us += STAT_GET(w, ttfb_us);
    for (int b = 0; b < WORKER_TTFB_BUCKETS; b++) sum->ttfb_buckets[b] += STAT_GET(w, ttfb_buckets[b]);
    sum->redis_published += STAT_GET(w, redis_published);
    sum->redis_received += STAT_GET(w, redis_received);
    sum->redis_reconnects += STAT_GET(w, redis_reconnects);
    *redis_up += STAT_GET(w, redis_up) != 0;
  }
}

/* One metric without labels: its HELP and TYPE lines and its value. */
static int metric(buf_t *out, const char *name, const char *type, const char *help, uint64_t v) {
  return buf_printf(out, "# HELP %s %s\n# TYPE %s %s\n%s %llu\n", name, help, name, type, name,
                    (unsigned long long)v);
}

int metrics_render(server_t *srv, buf_t *out) {
  worker_stats_t s;
  int nworkers, redis_up;
  sum_workers(srv, &s, &nworkers, &redis_up);
  hub_stats_t hs;
  hub_get_stats(srv->hub, &hs);
  int rc = 0;
  rc |= metric(out, "sluice_workers", "gauge", "Worker threads serving.", (uint64_t)nworkers);
  rc |= metric(out, "sluice_connections", "gauge", "Open client connections.",
               (uint64_t)atomic_load(&srv->nconns));
  rc |= metric(out, "sluice_streams", "gauge", "Open event streams.", s.streams);
  rc |= metric(out, "sluice_subscribers", "gauge", "Channel subscriptions of open streams.",
               s.subscribers);
  rc |= metric(out, "sluice_channels", "gauge", "Channels in this node's hub.", hs.channels);
  rc |= metric(out, "sluice_history_events", "gauge",
               "Events held in this node's channel histories (in Redis with --redis).", hs.retained);
  rc |= metric(out, "sluice_requests_total", "counter",
               "Requests ended (answered, or streams closed).", s.requests);
  rc |= metric(out, "sluice_events_published_total", "counter", "Events published on this node.",
               hs.published + s.redis_published);
  rc |= metric(out, "sluice_events_delivered_total", "counter",
               "Channel events written to subscribers.", s.delivered);
  rc |= metric(out, "sluice_bytes_sent_total", "counter", "Bytes written to clients.", s.bytes_out);
  rc |= metric(out, "sluice_slow_consumer_disconnects_total", "counter",
               "Subscribers dropped for passing max_queue.", s.slow_drops);
  rc |= metric(out, "sluice_handler_errors_total", "counter",
               "Errors that escaped a handler (answered 500 when nothing was sent yet).",
               s.handler_errors);
  rc |= metric(out, "sluice_budget_kills_total", "counter",
               "Handlers stopped for running past cpu_budget without yielding.", s.budget_kills);
  rc |= metric(out, "sluice_upstream_requests_total", "counter", "Upstream requests (sluice.fetch).",
               s.upstream_requests);
  rc |= metric(out, "sluice_upstream_errors_total", "counter",
               "Upstream requests that failed (connect, TLS, timeout, reset).", s.upstream_errors);
  rc |= buf_printf(out,
                   "# HELP sluice_upstream_ttfb_seconds Time from an upstream request to its response head.\n"
                   "# TYPE sluice_upstream_ttfb_seconds histogram\n");
  uint64_t cum = 0;
  for (int b = 0; b < WORKER_TTFB_BUCKETS; b++) {
    cum += s.ttfb_buckets[b];
    rc |= buf_printf(out, "sluice_upstream_ttfb_seconds_bucket{le=\"%g\"} %llu\n",
                     worker_ttfb_bounds[b], (unsigned long long)cum);
  }
  rc |= buf_printf(out,
                   "sluice_upstream_ttfb_seconds_bucket{le=\"+Inf\"} %llu\n"
                   "sluice_upstream_ttfb_seconds_sum %.6f\n"
                   "sluice_upstream_ttfb_seconds_count %llu\n",
                   (unsigned long long)s.ttfb_count, (double)s.ttfb_us / 1e6,
                   (unsigned long long)s.ttfb_count);
  rc |= buf_printf(out,
                   "# HELP sluice_reloads_total App reloads, by outcome.\n"
                   "# TYPE sluice_reloads_total counter\n"
                   "sluice_reloads_total{result=\"ok\"} %u\n"
                   "sluice_reloads_total{result=\"failed\"} %u\n",
                   atomic_load(&srv->reloads_ok), atomic_load(&srv->reloads_failed));
  if (srv->cfg.redis_url != NULL) {
    rc |= metric(out, "sluice_redis_links_up", "gauge",
                 "Workers whose link to Redis is up (one link per worker).", (uint64_t)redis_up);
    rc |= metric(out, "sluice_redis_events_received_total", "counter",
                 "Events that arrived from Redis.", s.redis_received);
    rc |= metric(out, "sluice_redis_reconnects_total", "counter",
                 "Links to Redis made again after a loss.", s.redis_reconnects);
  }
  rc |= buf_printf(out,
                   "# HELP sluice_start_time_seconds When the server started, in Unix time.\n"
                   "# TYPE sluice_start_time_seconds gauge\n"
                   "sluice_start_time_seconds %.3f\n",
                   srv->started_at);
  return rc ? -ENOMEM : 0;
}

void metrics_health(server_t *srv, metrics_health_t *h) {
  worker_stats_t s;
  int redis_up;
  sum_workers(srv, &s, &h->workers, &redis_up);
  h->redis = srv->cfg.redis_url != NULL ? 1 + redis_up : 0;
  uv_timeval64_t tv;
  uv_gettimeofday(&tv);
  h->uptime = (double)tv.tv_sec + (double)tv.tv_usec / 1e6 - srv->started_at;
}
