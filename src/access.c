/* access.c - see access.h. */
#include "access.h"

#include <stdint.h>
#include <string.h>

#include "http.h"
#include "log.h"
#include "put.h"
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

/* Appends a duration in microseconds as milliseconds with three decimals. */
static char *put_ms(char *p, uint64_t us) {
  p = put_u64(p, us / 1000);
  *p++ = '.';
  unsigned frac = (unsigned)(us % 1000);
  *p++ = (char)('0' + frac / 100);
  *p++ = (char)('0' + frac / 10 % 10);
  *p++ = (char)('0' + frac % 10);
  return p;
}

/* The fixed-size parts of a record: everything but the target. */
#define RECORD_MAX 512

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
  uint64_t us = r->t0 ? (uv_hrtime() - r->t0) / 1000 : 0;
  /* nginx's 499: the client went away before a response was made. */
  int status = r->status ? r->status : 499;
  const char *method = r->t0 ? http_method_name(r->msg.method) : "-";
  const char *target = r->msg.raw.p;
  size_t tn = r->t0 && target != NULL ? r->msg.url_len : 0;
  buf_t *b = &w->access;
  /* Records are built by hand: printf was most of what a record cost. */
  if (buf_reserve(b, RECORD_MAX + tn * 6) != 0) return;
  char *p = b->p + b->len;
  if (log_is_json()) {
    p = PUT_LIT(p, "{\"time\":\"");
    p = put_bytes(p, ts, tlen);
    p = PUT_LIT(p, "\",\"type\":\"access\",\"worker\":");
    p = put_u64(p, (uint64_t)w->id);
    p = PUT_LIT(p, ",\"remote\":\"");
    p = put_bytes(p, addr, strlen(addr));
    p = PUT_LIT(p, "\",\"method\":\"");
    p = put_bytes(p, method, strlen(method));
    p = PUT_LIT(p, "\",\"target\":\"");
    p += log_json_escape(p, tn * 6, target, tn);
    p = PUT_LIT(p, "\",\"status\":");
    p = put_u64(p, (uint64_t)status);
    p = PUT_LIT(p, ",\"bytes\":");
    p = put_u64(p, r->bytes);
    p = PUT_LIT(p, ",\"duration_ms\":");
    p = put_ms(p, us);
    p = r->streaming ? PUT_LIT(p, ",\"stream\":true}\n") : PUT_LIT(p, ",\"stream\":false}\n");
    b->len = (size_t)(p - b->p);
  } else {
    p = put_bytes(p, ts, tlen);
    p = PUT_LIT(p, " access [w");
    p = put_u64(p, (uint64_t)w->id);
    p = PUT_LIT(p, "] ");
    p = put_bytes(p, addr, strlen(addr));
    p = PUT_LIT(p, " \"");
    p = put_bytes(p, method, strlen(method));
    *p++ = ' ';
    if (tn == 0) *p++ = '-';
    b->len = (size_t)(p - b->p);
    put_target_text(b, target, tn); /* within what was reserved */
    p = b->p + b->len;
    p = PUT_LIT(p, "\" ");
    p = put_u64(p, (uint64_t)status);
    *p++ = ' ';
    p = put_u64(p, r->bytes);
    *p++ = ' ';
    p = put_ms(p, us);
    p = PUT_LIT(p, "ms");
    if (r->streaming) p = PUT_LIT(p, " stream");
    *p++ = '\n';
    b->len = (size_t)(p - b->p);
  }
  if (b->len >= ACCESS_FLUSH_AT) access_flush(w);
}

void access_flush(worker_t *w) {
  log_out(w->access.p, w->access.len);
  buf_clear(&w->access);
}
