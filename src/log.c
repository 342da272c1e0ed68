/* log.c - see log.h. */
#include "log.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static enum log_level min_level = LOG_INFO;
static int json; /* set once at startup, before any worker runs */
static _Thread_local char thread_name[16] = "main";
/* Writers to stderr take turns: a write to a pipe (journald, docker) is
 * atomic only up to PIPE_BUF, so records could tear across workers. */
static pthread_mutex_t out_lock = PTHREAD_MUTEX_INITIALIZER;

void log_out(const char *p, size_t n) {
  pthread_mutex_lock(&out_lock);
  while (n > 0) {
    ssize_t w = write(STDERR_FILENO, p, n);
    if (w <= 0) break; /* nowhere to report a failing stderr */
    p += w;
    n -= (size_t)w;
  }
  pthread_mutex_unlock(&out_lock);
}

void log_set_level(enum log_level level) { min_level = level; }

void log_set_json(int on) { json = on; }

int log_is_json(void) { return json; }

void log_set_thread_name(const char *name) {
  snprintf(thread_name, sizeof(thread_name), "%s", name);
}

size_t log_timestamp(char *out) {
  /* The date and time to the second, formatted once a second per thread:
   * an access log writes a record per request. */
  static _Thread_local time_t sec = -1;
  static _Thread_local char prefix[64]; /* "YYYY-MM-DDTHH:MM:SS" */
  struct timeval tv;
  gettimeofday(&tv, NULL);
  if (tv.tv_sec != sec) {
    struct tm tm;
    gmtime_r(&tv.tv_sec, &tm);
    snprintf(prefix, sizeof(prefix), "%04d-%02d-%02dT%02d:%02d:%02d", tm.tm_year + 1900,
             tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec);
    sec = tv.tv_sec;
  }
  int ms = (int)(tv.tv_usec / 1000);
  memcpy(out, prefix, 19);
  out[19] = '.';
  out[20] = (char)('0' + ms / 100);
  out[21] = (char)('0' + ms / 10 % 10);
  out[22] = (char)('0' + ms % 10);
  out[23] = 'Z';
  out[24] = '\0';
  return 24;
}

/* The length of the valid UTF-8 sequence starting at s[0..n) (n > 0), or
 * 0 when it is not one (overlong forms and surrogates included). */
static size_t utf8_len(const unsigned char *s, size_t n) {
  unsigned c = s[0];
  size_t len = c < 0xc2 ? 0 : c < 0xe0 ? 2 : c < 0xf0 ? 3 : c < 0xf5 ? 4 : 0;
  if (len == 0 || len > n) return 0;
  for (size_t i = 1; i < len; i++)
    if ((s[i] & 0xc0) != 0x80) return 0;
  if (len == 3 && ((c == 0xe0 && s[1] < 0xa0) || (c == 0xed && s[1] >= 0xa0))) return 0;
  if (len == 4 && ((c == 0xf0 && s[1] < 0x90) || (c == 0xf4 && s[1] >= 0x90))) return 0;
  return len;
}

size_t log_json_escape(char *out, size_t cap, const char *s, size_t n) {
  static const char hex[] = "0123456789abcdef";
  size_t o = 0;
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)s[i];
    if (c >= 0x80) {
      /* Valid UTF-8 as it is; any other byte as U+FFFD, so that every
       * record is valid JSON whatever a client sent. */
      size_t len = utf8_len((const unsigned char *)s + i, n - i);
      if (len == 0) {
        if (o + 6 > cap) break;
        memcpy(out + o, "\\ufffd", 6);
        o += 6;
        continue;
      }
      if (o + len > cap) break;
      memcpy(out + o, s + i, len);
      o += len;
      i += len - 1;
      continue;
    }
    char esc = c == '"' ? '"' : c == '\\' ? '\\' : c == '\n' ? 'n' : c == '\t' ? 't' : c == '\r' ? 'r' : 0;
    size_t need = esc ? 2 : c < 0x20 || c == 0x7f ? 6 : 1;
    if (o + need > cap) break;
    if (esc) {
      out[o++] = '\\';
      out[o++] = esc;
    } else if (need == 6) {
      memcpy(out + o, "\\u00", 4);
      out[o + 4] = hex[c >> 4];
      out[o + 5] = hex[c & 15];
      o += 6;
    } else {
      out[o++] = (char)c;
    }
  }
  return o;
}

void log_write(enum log_level level, const char *fmt, ...) {
  static const char *names[] = {"debug", "info", "warn", "error"};
  if (level < min_level) return;

  char msg[8192];
  va_list ap;
  va_start(ap, fmt);
  int m = vsnprintf(msg, sizeof(msg), fmt, ap);
  va_end(ap);
  size_t mlen = m < 0 ? 0 : (size_t)m;
  int cut = mlen >= sizeof(msg);
  if (cut) mlen = sizeof(msg) - 1;

  char line[8192 * 2 + 256];
  char ts[32];
  size_t tlen = log_timestamp(ts);
  size_t len;
  if (json) {
    int n = snprintf(line, sizeof(line), "{\"time\":\"%.*s\",\"level\":\"%s\",\"thread\":\"%s\",\"msg\":\"",
                     (int)tlen, ts, names[level], thread_name);
    len = (size_t)n + log_json_escape(line + n, sizeof(line) - (size_t)n - 16, msg, mlen);
    if (cut) len += (size_t)snprintf(line + len, 8, "...");
    len += (size_t)snprintf(line + len, 8, "\"}");
  } else {
    int n = snprintf(line, sizeof(line), "%.*s %s [%s] ", (int)tlen, ts, names[level], thread_name);
    memcpy(line + n, msg, mlen);
    len = (size_t)n + mlen;
    if (cut) {
      memcpy(line + len, "...", 3); /* say so when a record was cut */
      len += 3;
    }
  }
  line[len++] = '\n';
  log_out(line, len);
}
