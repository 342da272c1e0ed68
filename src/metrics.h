/*
 * metrics.h - the server's counters in Prometheus's text format, for
 * GET /_sluice/metrics, and the state GET /_sluice/health reports.
 *
 * Counters are summed over the workers: each worker writes its own
 * (worker.h, STAT_ADD) and this reads them all from whichever worker
 * answers, with relaxed atomic loads, so a scrape never locks anything.
 */
#ifndef SLUICE_METRICS_H
#define SLUICE_METRICS_H

#include "buf.h"
#include "server.h"

/* Appends the exposition text to out.  0, or -ENOMEM. */
int metrics_render(server_t *srv, buf_t *out);

typedef struct metrics_health {
  int workers;          /* workers serving */
  int redis;            /* 0: no --redis; else 1 + how many links are up */
  double uptime;        /* seconds */
} metrics_health_t;

/* Fills h with what a health check reports. */
void metrics_health(server_t *srv, metrics_health_t *h);

#endif
