/*
 * log.h - one-line log records on stderr.
 *
 * Each record is formatted into one buffer and written whole, under a lock
 * every thread's writes share, so lines from different workers never
 * interleave (a write(2) to a pipe is atomic only up to PIPE_BUF).  A
 * record carries the UTC time, the level and the worker that wrote it
 * ("main" for the main thread).
 */
#ifndef SLUICE_LOG_H
#define SLUICE_LOG_H

#include <stddef.h>

enum log_level { LOG_DEBUG, LOG_INFO, LOG_WARN, LOG_ERROR };

/* Sets the lowest level that is written (default LOG_INFO). */
void log_set_level(enum log_level level);

/* Names the calling thread in its records, e.g. "w1".  The name is copied. */
void log_set_thread_name(const char *name);

/* Writes records as JSON objects, one per line, instead of text:
 * {"time", "level", "thread", "msg"}. */
void log_set_json(int on);

/* Whether records are JSON. */
int log_is_json(void);

/* The current UTC time as "YYYY-MM-DDTHH:MM:SS.mmmZ" into out (at least 32
 * bytes); returns its length. */
size_t log_timestamp(char *out);

/* Writes s[0..n) as the inside of a JSON string into out (capacity cap):
 * quotes, backslashes and control bytes escaped, bytes that are not UTF-8
 * as U+FFFD (needs up to 6 bytes of out per byte of s).  Returns the length
 * written; stops early (at a character boundary) when out is full. */
size_t log_json_escape(char *out, size_t cap, const char *s, size_t n);

/* Writes n bytes of whole records to stderr, in turn with every other
 * thread's records. */
void log_out(const char *p, size_t n);

/* Writes one record.  Embedded newlines (tracebacks) are kept. */
void log_write(enum log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define log_debug(...) log_write(LOG_DEBUG, __VA_ARGS__)
#define log_info(...) log_write(LOG_INFO, __VA_ARGS__)
#define log_warn(...) log_write(LOG_WARN, __VA_ARGS__)
#define log_error(...) log_write(LOG_ERROR, __VA_ARGS__)

#endif
