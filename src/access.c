/* access.c - see access.h. */
#include "access.h"

#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "http.h"
#include "log.h"
#include "request.h"
#include "worker.h"

/* Past this many buffered bytes a worker writes at once, mid-turn. */
#define ACCESS_FLUSH_AT (64 * 1024)

/* Appends the request target for a text record: printable ASCII as is,
 * anything else (and quotes and backslashes) as \xHH, so that a record is
 * one line whatever the client sent. */
static void put_target_text(buf_t *b, const char *s, size_t n) {
  static const char hex[] = "0123456789abcdef";
  if (buf_reserve(b, n * 4) != 0) return;
  char *p = b->p + b->len;
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)s[i];
    if (c > 0x20 && c < 0x7f && c != '"' && c != '\\') {
      *p++ = (char)c;
    } else {
      *p++ = '\\';
      *p++ = 'x';
      *p++ = hex[c >> 4];
      *p++ = hex[c & 15];
    }
  }
  b->len = (size_t)(p - b->p);
}

static void put_target_json(buf_t *b, const char *s, size_t n) {
  if (buf_reserve(b, n * 6) != 0) return;
  b->len += log_json_escape(b->p + b->len, n * 6, s, n);
}

void access_log(req_t *r) {
  worker_t *w = r->w;
  /* A connection that closed before a request head came is no request. */
  if (r->t0 == 0 && r->status == 0) return;
  STAT_ADD(w, requests, 1);
  if (!w->cfg->access_log) return;
  char addr[64] = "-";
  if (r->conn == NULL || req_remote_addr(r, addr, sizeof(addr)) != 0) strcpy(addr, "-");
  char ts[32];
  size_t tlen = log_timestamp(ts);
  double ms = r->t0 ? (double)(uv_hrtime() - r->t0) / 1e6 : 0;
  /* nginx's 499: the client went away before a response was made. */
  int status = r->status ? r->status : 499;
  const char *method = r->t0 ? http_method_name(r->msg.method) : "-";
  const char *target = r->msg.raw.p;
  size_t tn = r->t0 && target != NULL ? r->msg.url_len : 0;
  buf_t *b = &w->access;
  if (log_is_json()) {
    buf_printf(b, "{\"time\":\"%.*s\",\"type\":\"access\",\"worker\":%d,\"remote\":\"%s\",\"method\":\"%s\",\"target\":\"",
               (int)tlen, ts, w->id, addr, method);
    put_target_json(b, target, tn);
    buf_printf(b, "\",\"status\":%d,\"bytes\":%llu,\"duration_ms\":%.3f,\"stream\":%s}\n", status,
               (unsigned long long)r->bytes, ms, r->streaming ? "true" : "false");
  } else {
    buf_printf(b, "%.*s access [w%d] %s \"%s ", (int)tlen, ts, w->id, addr, method);
    if (tn == 0) buf_puts(b, "-");
    put_target_text(b, target, tn);
    buf_printf(b, "\" %d %llu %.3fms%s\n", status, (unsigned long long)r->bytes, ms,
               r->streaming ? " stream" : "");
  }
  if (b->len >= ACCESS_FLUSH_AT) access_flush(w);
}

void access_flush(worker_t *w) {
  size_t off = 0;
  while (off < w->access.len) {
    ssize_t n = write(STDERR_FILENO, w->access.p + off, w->access.len - off);
    if (n <= 0) break; /* nowhere to report a failing stderr */
    off += (size_t)n;
  }
  buf_clear(&w->access);
}
