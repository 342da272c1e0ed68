/*
 * static.h - static files from an app's public/ folder.
 *
 * Pure apart from the file system: maps a request path to a file under the
 * root, refuses any path that would escape it, and reads the file into a
 * frame.  The caller (the request layer) writes the response head.
 */
#ifndef SLUICE_STATIC_H
#define SLUICE_STATIC_H

#include <stddef.h>

#include "frame.h"

typedef struct static_file {
  int status;         /* 200; 304 when if_none_match matched; 301 for a
                         directory asked for without its trailing slash
                         (redirect to url_path + "/"; nothing else is set) */
  const char *mime;   /* static string, e.g. "text/html; charset=utf-8" */
  char etag[64];      /* quoted strong validator, e.g. "\"5f3a-1c2\"" */
  long long mtime;    /* seconds since the epoch, for Last-Modified */
  size_t size;        /* file size in bytes */
  frame_t *body;      /* the file's bytes (one reference, caller's); NULL for 304 or head_only */
} static_file_t;

/* Looks up url_path (the raw, still percent-encoded request path without the
 * query) under root.  A directory maps to its index.html; a directory path
 * without a trailing slash gets status 301.  if_none_match (NULL when
 * absent) is compared with the file's ETag (a list and "*" are honoured).
 * head_only: do not read the bytes.
 * Returns 0 with *out filled; -ENOENT when there is no such file;
 * -EACCES when the path is refused (it decodes to something holding NUL,
 * a ".." segment, a backslash, or malformed %-escapes); -EFBIG over
 * 64 MiB; another negative errno on read failure. */
int static_lookup(const char *root, const char *url_path, size_t path_len,
                  const char *if_none_match, int head_only, static_file_t *out);

/* The MIME type for a file name, by extension; "application/octet-stream"
 * when unknown. */
const char *static_mime(const char *name);

#endif
