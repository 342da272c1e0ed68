/*
 * static.c - static files from an app's public/ folder; see static.h.
 *
 * The request path is decoded once, checked as a whole, and then handed to
 * the file system unchanged: nothing is normalised, because a path that
 * would need normalising to be safe is one a client has no honest reason to
 * send.  Files are read whole into one frame, so the response body can be
 * queued like any other frame.
 */
#include "static.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#define STATIC_MAX_SIZE (64LL * 1024 * 1024)
#define STATIC_INDEX "index.html"

typedef struct mime_entry {
  const char *ext;
  const char *type;
} mime_entry_t;

/* Text types name their charset so that browsers do not guess it from the
 * content.  JSON, XML and SVG carry their encoding in their own format. */
static const mime_entry_t mime_types[] = {
    {"html", "text/html; charset=utf-8"},
    {"htm", "text/html; charset=utf-8"},
    {"css", "text/css; charset=utf-8"},
    {"js", "text/javascript; charset=utf-8"},
    {"mjs", "text/javascript; charset=utf-8"},
    {"txt", "text/plain; charset=utf-8"},
    {"csv", "text/csv; charset=utf-8"},
    {"md", "text/markdown; charset=utf-8"},
    {"json", "application/json"},
    {"map", "application/json"},
    {"webmanifest", "application/manifest+json"},
    {"xml", "application/xml"},
    {"svg", "image/svg+xml"},
    {"png", "image/png"},
    {"jpg", "image/jpeg"},
    {"jpeg", "image/jpeg"},
    {"gif", "image/gif"},
    {"webp", "image/webp"},
    {"avif", "image/avif"},
    {"ico", "image/x-icon"},
    {"woff", "font/woff"},
    {"woff2", "font/woff2"},
    {"ttf", "font/ttf"},
    {"otf", "font/otf"},
    {"wasm", "application/wasm"},
    {"pdf", "application/pdf"},
    {"zip", "application/zip"},
    {"mp4", "video/mp4"},
    {"webm", "video/webm"},
    {"mp3", "audio/mpeg"},
    {"ogg", "audio/ogg"},
    {"wav", "audio/wav"},
};

const char *static_mime(const char *name) {
  const char *base = strrchr(name, '/');
  base = base ? base + 1 : name;
  const char *dot = strrchr(base, '.');
  /* A leading dot names a hidden file, not an extension. */
  if (dot == NULL || dot == base) return "application/octet-stream";
  for (size_t i = 0; i < sizeof(mime_types) / sizeof(mime_types[0]); i++)
    if (strcasecmp(dot + 1, mime_types[i].ext) == 0) return mime_types[i].type;
  return "application/octet-stream";
}

/* Returns the value of the hex digit c, or -1 when c is not one. */
static int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

/* Percent-decodes the n bytes at in into out, which has room for cap bytes,
 * and NUL-terminates it.  Returns the decoded length; -EACCES when an escape
 * is malformed or the result would hold a NUL or a backslash (a NUL would
 * cut the name the kernel sees short of the one checked here, and a
 * backslash is a separator to some clients and file systems, never a
 * character a web path needs); -ENOENT when the result does not fit. */
static long decode_path(const char *in, size_t n, char *out, size_t cap) {
  size_t o = 0;
  for (size_t i = 0; i < n; i++) {
    int c = (unsigned char)in[i];
    if (c == '%') {
      if (n - i < 3) return -EACCES;
      int hi = hex_value(in[i + 1]), lo = hex_value(in[i + 2]);
      if (hi < 0 || lo < 0) return -EACCES;
      c = hi * 16 + lo;
      i += 2;
    }
    if (c == '\0' || c == '\\') return -EACCES;
    if (o + 1 >= cap) return -ENOENT;
    out[o++] = (char)c;
  }
  out[o] = '\0';
  return (long)o;
}

/* Returns 1 when the decoded path has a ".." segment, else 0.  It runs after
 * decoding so that "%2e%2e", ".%2E" and "..%2f" are caught like "..". */
static int has_dotdot(const char *p, size_t n) {
  size_t start = 0;
  for (size_t i = 0; i <= n; i++) {
    if (i < n && p[i] != '/') continue;
    if (i - start == 2 && p[start] == '.' && p[start + 1] == '.') return 1;
    start = i + 1;
  }
  return 0;
}

/* Opens path for reading and stats it.  Returns the descriptor, or a
 * negative errno, with "not there" in any form reported as -ENOENT.
 * O_NONBLOCK keeps a FIFO in the folder from stalling the worker in open();
 * it changes nothing for the regular files that are served. */
static int open_stat(const char *path, struct stat *st) {
  int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) {
    int e = errno;
    return (e == ENOENT || e == ENOTDIR || e == ENAMETOOLONG || e == ELOOP) ? -ENOENT : -e;
  }
  if (fstat(fd, st) != 0) {
    int e = errno;
    close(fd);
    return -e;
  }
  return fd;
}

/* Reads exactly size bytes from fd into a new frame stored in *out.  A file
 * that shrank since fstat() yields a frame as long as what was read, so the
 * caller's Content-Length always matches the bytes.  0, or a negative errno. */
static int read_frame(int fd, size_t size, frame_t **out) {
  frame_t *f = frame_new(size);
  if (f == NULL) return -ENOMEM;
  size_t got = 0;
  while (got < size) {
    ssize_t r = read(fd, f->data + got, size - got);
    if (r < 0) {
      if (errno == EINTR) continue;
      int e = errno;
      frame_unref(f);
      return -e;
    }
    if (r == 0) break;
    got += (size_t)r;
  }
  f->len = got;
  *out = f;
  return 0;
}

/* Returns 1 when the If-None-Match value matches etag, else 0.  The header
 * is a comma-separated list of entity tags, each possibly weak ("W/"), and
 * RFC 9110 compares them weakly here, so the prefix is ignored; "*" matches
 * any file that exists.  Tags are read quote to quote because a comma is a
 * legal character inside one. */
static int etag_matches(const char *header, const char *etag) {
  size_t elen = strlen(etag);
  const char *p = header;
  while (*p) {
    while (*p == ' ' || *p == '\t' || *p == ',') p++;
    if (*p == '\0') break;
    if (*p == '*') {
      const char *q = p + 1;
      while (*q == ' ' || *q == '\t') q++;
      if (*q == '\0' || *q == ',') return 1;
    }
    if (p[0] == 'W' && p[1] == '/') p += 2;
    if (*p == '"') {
      const char *close = strchr(p + 1, '"');
      if (close == NULL) return 0;
      size_t tlen = (size_t)(close - p) + 1;
      if (tlen == elen && memcmp(p, etag, elen) == 0) return 1;
      p = close + 1;
    }
    /* Skip the rest of this element, well-formed or not. */
    while (*p && *p != ',') p++;
  }
  return 0;
}

int static_lookup(const char *root, const char *url_path, size_t path_len,
                  const char *if_none_match, int head_only, static_file_t *out) {
  memset(out, 0, sizeof(*out));
  if (root == NULL || root[0] == '\0') return -EINVAL;
  if (url_path == NULL || path_len == 0 || url_path[0] != '/') return -EACCES;

  /* The root's trailing slashes go, so that root + "/x" is the one join;
   * a root of "/" becomes "" and the path supplies the slash. */
  size_t root_len = strlen(root);
  while (root_len > 0 && root[root_len - 1] == '/') root_len--;

  char path[PATH_MAX];
  size_t room = sizeof(path) - sizeof("/" STATIC_INDEX);
  if (root_len >= room) return -ENOENT;
  memcpy(path, root, root_len);
  long n = decode_path(url_path, path_len, path + root_len, room - root_len);
  if (n < 0) return (int)n;
  if (has_dotdot(path + root_len, (size_t)n)) return -EACCES;
  size_t len = root_len + (size_t)n;

  struct stat st;
  int fd = open_stat(path, &st);
  if (fd < 0) return fd;
  if (S_ISDIR(st.st_mode)) {
    close(fd);
    if (path[len - 1] != '/') path[len++] = '/';
    memcpy(path + len, STATIC_INDEX, sizeof(STATIC_INDEX));
    fd = open_stat(path, &st);
    if (fd < 0) return fd;
    /* Without the slash, the index's relative links would resolve against
     * the parent: send the client to the slashed path first. */
    if (url_path[path_len - 1] != '/') {
      close(fd);
      out->status = 301;
      return 0;
    }
  }
  /* Devices, sockets and FIFOs are not files to serve, and reading one
   * could block or never end. */
  if (!S_ISREG(st.st_mode)) {
    close(fd);
    return -ENOENT;
  }
  if ((long long)st.st_size > STATIC_MAX_SIZE) {
    close(fd);
    return -EFBIG;
  }

  out->status = 200;
  out->mime = static_mime(path);
  out->mtime = (long long)st.st_mtim.tv_sec;
  out->size = (size_t)st.st_size;
  /* Nanoseconds as well as seconds: a file rewritten at the same size within
   * one second must not keep its validator, or a strong ETag would lie. */
  unsigned long long mtime_ns = (unsigned long long)st.st_mtim.tv_sec * 1000000000ULL +
                                (unsigned long long)st.st_mtim.tv_nsec;
  snprintf(out->etag, sizeof(out->etag), "\"%llx-%llx\"", (unsigned long long)st.st_size,
           mtime_ns);

  if (if_none_match != NULL && etag_matches(if_none_match, out->etag)) {
    close(fd);
    out->status = 304;
    return 0;
  }
  if (head_only) {
    close(fd);
    return 0;
  }
  int rc = read_frame(fd, out->size, &out->body);
  close(fd);
  if (rc < 0) {
    memset(out, 0, sizeof(*out));
    return rc;
  }
  out->size = out->body->len;
  return 0;
}
