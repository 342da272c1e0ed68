/* test_static.c - static file lookup against a scratch directory. */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "static.h"
#include "unit.h"

#define HELLO "hello, world\n"
#define INDEX "<h1>home</h1>\n"
#define SUB_INDEX "<h1>sub</h1>\n"
#define SECRET "top secret\n"

static char base[64];  /* the scratch directory */
static char root[128]; /* base/public, the served root */

/* Writes the C string body to base/rel, or fails the run. */
static void write_file(const char *rel, const char *body) {
  char p[256];
  snprintf(p, sizeof(p), "%s/%s", base, rel);
  FILE *f = fopen(p, "wb");
  if (f == NULL || fputs(body, f) < 0 || fclose(f) != 0) {
    perror(p);
    exit(2);
  }
}

/* Creates the directory base/rel, or fails the run. */
static void make_dir(const char *rel) {
  char p[256];
  snprintf(p, sizeof(p), "%s/%s", base, rel);
  if (mkdir(p, 0755) != 0) {
    perror(p);
    exit(2);
  }
}

/* Builds the scratch tree: a public root, and a secret beside it that no
 * request may reach. */
static void setup(void) {
  snprintf(base, sizeof(base), "/tmp/sluice-static-XXXXXX");
  if (mkdtemp(base) == NULL) {
    perror("mkdtemp");
    exit(2);
  }
  snprintf(root, sizeof(root), "%s/public", base);
  make_dir("public");
  make_dir("public/sub");
  make_dir("public/noindex");
  make_dir("public/a%b");
  write_file("secret", SECRET);
  write_file("public/hello.txt", HELLO);
  write_file("public/index.html", INDEX);
  write_file("public/sub/index.html", SUB_INDEX);
  write_file("public/app.js", "console.log(1)\n");
  write_file("public/style.CSS", "body{}\n");
  write_file("public/blob.qqq", "?");
  write_file("public/noext", "n");
  write_file("public/with space.txt", "s");
  write_file("public/empty.txt", "");
  write_file("public/a%b/x.txt", "pct");

  char p[256];
  snprintf(p, sizeof(p), "%s/public/pipe", base);
  if (mkfifo(p, 0644) != 0) perror("mkfifo");
  snprintf(p, sizeof(p), "%s/public/huge.bin", base);
  int fd = open(p, O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd < 0 || ftruncate(fd, 64LL * 1024 * 1024 + 1) != 0) perror("huge.bin");
  if (fd >= 0) close(fd);
  snprintf(p, sizeof(p), "%s/public/limit.bin", base);
  fd = open(p, O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd < 0 || ftruncate(fd, 64LL * 1024 * 1024) != 0) perror("limit.bin");
  if (fd >= 0) close(fd);
}

/* Removes one entry of the scratch tree; called deepest first. */
static int remove_entry(const char *p, const struct stat *st, int flag, struct FTW *ftw) {
  (void)st, (void)flag, (void)ftw;
  if (remove(p) != 0) perror(p);
  return 0;
}

static void teardown(void) { nftw(base, remove_entry, 16, FTW_DEPTH | FTW_PHYS); }

/* Looks up the C string path with no validator, reading the body. */
static int lookup(const char *path, static_file_t *out) {
  return static_lookup(root, path, strlen(path), NULL, 0, out);
}

/* Looks up path and checks that it is refused with want. */
#define CHECK_FAILS(path, want)                 \
  do {                                          \
    static_file_t o_;                           \
    CHECK(lookup((path), &o_) == (want));       \
    CHECK(o_.body == NULL);                     \
  } while (0)

/* Looks up path and checks a 200 with the given type and bytes. */
#define CHECK_SERVES(path, mime_, bytes)                                 \
  do {                                                                  \
    static_file_t o_;                                                   \
    int rc_ = lookup((path), &o_);                                      \
    CHECK(rc_ == 0);                                                    \
    if (rc_ == 0) {                                                     \
      CHECK(o_.status == 200);                                          \
      CHECK(strcmp(o_.mime, (mime_)) == 0);                             \
      CHECK(o_.size == strlen(bytes));                                  \
      CHECK(o_.body != NULL);                                           \
      if (o_.body != NULL) CHECK_BYTES(o_.body->data, o_.body->len, bytes); \
      frame_unref(o_.body);                                             \
    }                                                                   \
  } while (0)

static void test_serves(void) {
  CHECK_SERVES("/hello.txt", "text/plain; charset=utf-8", HELLO);
  CHECK_SERVES("/index.html", "text/html; charset=utf-8", INDEX);
  CHECK_SERVES("/app.js", "text/javascript; charset=utf-8", "console.log(1)\n");
  CHECK_SERVES("/style.CSS", "text/css; charset=utf-8", "body{}\n");
  CHECK_SERVES("/blob.qqq", "application/octet-stream", "?");
  CHECK_SERVES("/noext", "application/octet-stream", "n");
  CHECK_SERVES("/empty.txt", "text/plain; charset=utf-8", "");
  /* Escapes that decode to ordinary characters are fine. */
  CHECK_SERVES("/with%20space.txt", "text/plain; charset=utf-8", "s");
  CHECK_SERVES("/hello%2etxt", "text/plain; charset=utf-8", HELLO);
  CHECK_SERVES("/%68ello.txt", "text/plain; charset=utf-8", HELLO);
  CHECK_SERVES("/a%25b/x.txt", "text/plain; charset=utf-8", "pct");
  CHECK_SERVES("/sub%2findex.html", "text/html; charset=utf-8", SUB_INDEX);

  /* Directories serve their index.html under the slash; without it they
   * answer 301, so that the page's relative links resolve in the folder. */
  CHECK_SERVES("/", "text/html; charset=utf-8", INDEX);
  CHECK_SERVES("/sub/", "text/html; charset=utf-8", SUB_INDEX);
  {
    static_file_t d;
    CHECK(static_lookup(root, "/sub", 4, NULL, 0, &d) == 0);
    CHECK(d.status == 301 && d.body == NULL);
  }

  /* Only path_len bytes are looked at. */
  static_file_t o;
  CHECK(static_lookup(root, "/hello.txtGARBAGE", 10, NULL, 0, &o) == 0);
  CHECK(o.body != NULL && o.body->len == strlen(HELLO));
  frame_unref(o.body);

  /* A root given with a trailing slash is the same root. */
  char slashed[160];
  snprintf(slashed, sizeof(slashed), "%s//", root);
  CHECK(static_lookup(slashed, "/hello.txt", 10, NULL, 0, &o) == 0);
  CHECK(o.body != NULL && o.size == strlen(HELLO));
  frame_unref(o.body);

  /* mtime and size come from the file itself. */
  char p[256];
  struct stat st;
  snprintf(p, sizeof(p), "%s/hello.txt", root);
  CHECK(stat(p, &st) == 0);
  CHECK(lookup("/hello.txt", &o) == 0);
  CHECK(o.mtime == (long long)st.st_mtime);
  CHECK(o.size == (size_t)st.st_size);
  frame_unref(o.body);

  /* Exactly 64 MiB is allowed; looked up head-only to keep the test light. */
  CHECK(static_lookup(root, "/limit.bin", 10, NULL, 1, &o) == 0);
  CHECK(o.size == 64u * 1024 * 1024 && o.body == NULL);
}

static void test_head_only(void) {
  static_file_t o;
  CHECK(static_lookup(root, "/hello.txt", 10, NULL, 1, &o) == 0);
  CHECK(o.status == 200);
  CHECK(o.body == NULL);
  CHECK(o.size == strlen(HELLO));
  CHECK(strcmp(o.mime, "text/plain; charset=utf-8") == 0);
  CHECK(o.etag[0] == '"');
  CHECK(static_lookup(root, "/sub/", 5, NULL, 1, &o) == 0);
  CHECK(o.body == NULL && o.size == strlen(SUB_INDEX));
}

/* Looks up /hello.txt with the given If-None-Match and returns the status,
 * or the error. */
static int status_with(const char *inm) {
  static_file_t o;
  int rc = static_lookup(root, "/hello.txt", 10, inm, 0, &o);
  if (rc < 0) return rc;
  if (o.status == 304) CHECK(o.body == NULL && o.etag[0] == '"' && o.size == strlen(HELLO));
  if (o.status == 200) CHECK(o.body != NULL);
  frame_unref(o.body);
  return o.status;
}

static void test_etag(void) {
  static_file_t o;
  CHECK(static_lookup(root, "/hello.txt", 10, NULL, 1, &o) == 0);
  const char *etag = o.etag;
  size_t elen = strlen(etag);
  CHECK(elen >= 3 && etag[0] == '"' && etag[elen - 1] == '"');
  CHECK(strchr(etag + 1, '"') == etag + elen - 1);
  CHECK(strspn(etag + 1, "0123456789abcdef-") == elen - 2);

  char h[256];
  CHECK(status_with(etag) == 304);
  snprintf(h, sizeof(h), "W/%s", etag);
  CHECK(status_with(h) == 304);
  snprintf(h, sizeof(h), "\"nope\", %s", etag);
  CHECK(status_with(h) == 304);
  snprintf(h, sizeof(h), "\"a,b\",W/\"x\" ,\t%s , \"z\"", etag);
  CHECK(status_with(h) == 304);
  CHECK(status_with("*") == 304);
  CHECK(status_with(" * ") == 304);

  CHECK(status_with("\"nope\"") == 200);
  CHECK(status_with("W/\"nope\", \"0-0\"") == 200);
  CHECK(status_with("") == 200);
  CHECK(status_with("\"unterminated") == 200);
  CHECK(status_with("*x") == 200);
  /* The tag without its quotes is not the tag. */
  snprintf(h, sizeof(h), "%.*s", (int)(elen - 2), etag + 1);
  CHECK(status_with(h) == 200);
  /* One character off. */
  snprintf(h, sizeof(h), "%s", etag);
  h[elen - 2] = h[elen - 2] == '0' ? '1' : '0';
  CHECK(status_with(h) == 200);

  /* Touching the file changes the validator, even within the same second. */
  char saved[64];
  snprintf(saved, sizeof(saved), "%s", etag);
  char p[256];
  snprintf(p, sizeof(p), "%s/hello.txt", root);
  struct stat st;
  CHECK(stat(p, &st) == 0);
  struct timespec ts[2] = {st.st_atim, st.st_mtim};
  ts[1].tv_nsec = (ts[1].tv_nsec + 1) % 1000000000L;
  CHECK(utimensat(AT_FDCWD, p, ts, 0) == 0);
  CHECK(static_lookup(root, "/hello.txt", 10, NULL, 1, &o) == 0);
  CHECK(strcmp(o.etag, saved) != 0);
  CHECK(status_with(saved) == 200);

  /* A 304 still describes the file. */
  CHECK(static_lookup(root, "/hello.txt", 10, "*", 0, &o) == 0);
  CHECK(o.status == 304 && o.body == NULL);
  CHECK(strcmp(o.mime, "text/plain; charset=utf-8") == 0);
}

static void test_missing(void) {
  CHECK_FAILS("/nope.txt", -ENOENT);
  CHECK_FAILS("/sub/nope", -ENOENT);
  CHECK_FAILS("/hello.txt/", -ENOENT);
  CHECK_FAILS("/hello.txt/x", -ENOENT);
  CHECK_FAILS("/noindex", -ENOENT);
  CHECK_FAILS("/noindex/", -ENOENT);
  CHECK_FAILS("/pipe", -ENOENT);
  CHECK_FAILS("/huge.bin", -EFBIG);

  static_file_t o;
  CHECK(static_lookup(root, "/huge.bin", 9, NULL, 1, &o) == -EFBIG);

  /* A name far longer than any path is simply not there. */
  static char longpath[10000];
  longpath[0] = '/';
  memset(longpath + 1, 'a', sizeof(longpath) - 2);
  CHECK_FAILS(longpath, -ENOENT);
}

static void test_refused(void) {
  CHECK_FAILS("/../secret", -EACCES);
  CHECK_FAILS("/%2e%2e/secret", -EACCES);
  CHECK_FAILS("/%2E%2E/secret", -EACCES);
  CHECK_FAILS("/.%2E/secret", -EACCES);
  CHECK_FAILS("/%2e./secret", -EACCES);
  CHECK_FAILS("/sub/..%2fsecret", -EACCES);
  CHECK_FAILS("/sub/..%2F..%2Fsecret", -EACCES);
  CHECK_FAILS("/sub/../hello.txt", -EACCES); /* never collapsed */
  CHECK_FAILS("/..", -EACCES);
  CHECK_FAILS("/sub/..", -EACCES);
  CHECK_FAILS("/a%00b", -EACCES);
  CHECK_FAILS("/%zz", -EACCES);
  CHECK_FAILS("/%", -EACCES);
  CHECK_FAILS("/%2", -EACCES);
  CHECK_FAILS("/hello.txt%", -EACCES);
  CHECK_FAILS("/%g0", -EACCES);
  CHECK_FAILS("/a\\b", -EACCES);
  CHECK_FAILS("/..\\secret", -EACCES);
  CHECK_FAILS("/%5c..%5csecret", -EACCES);
  CHECK_FAILS("hello.txt", -EACCES);
  CHECK_FAILS("", -EACCES);

  /* A raw NUL inside the stated length is refused too. */
  static_file_t o;
  CHECK(static_lookup(root, "/hello.txt\0x", 12, NULL, 0, &o) == -EACCES);
  CHECK(o.body == NULL);

  /* "..." and "..x" are ordinary names, merely absent here. */
  CHECK_FAILS("/...", -ENOENT);
  CHECK_FAILS("/..x", -ENOENT);
  CHECK_FAILS("/x..", -ENOENT);
}

static void test_mime(void) {
  static const char *cases[][2] = {
      {"a.html", "text/html; charset=utf-8"},
      {"a.htm", "text/html; charset=utf-8"},
      {"a.css", "text/css; charset=utf-8"},
      {"a.js", "text/javascript; charset=utf-8"},
      {"a.mjs", "text/javascript; charset=utf-8"},
      {"a.json", "application/json"},
      {"a.js.map", "application/json"},
      {"a.txt", "text/plain; charset=utf-8"},
      {"a.svg", "image/svg+xml"},
      {"a.png", "image/png"},
      {"a.jpg", "image/jpeg"},
      {"a.jpeg", "image/jpeg"},
      {"a.gif", "image/gif"},
      {"a.webp", "image/webp"},
      {"favicon.ico", "image/x-icon"},
      {"a.woff", "font/woff"},
      {"a.woff2", "font/woff2"},
      {"a.wasm", "application/wasm"},
      {"a.xml", "application/xml"},
      {"a.pdf", "application/pdf"},
      {"a.mp4", "video/mp4"},
      {"a.webm", "video/webm"},
      {"a.mp3", "audio/mpeg"},
      {"/x/y/INDEX.HTML", "text/html; charset=utf-8"},
      {"a.tar.gz", "application/octet-stream"},
      {"a.", "application/octet-stream"},
      {"README", "application/octet-stream"},
      {".html", "application/octet-stream"},
      {"/dir.js/file", "application/octet-stream"},
      {"", "application/octet-stream"},
  };
  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    const char *got = static_mime(cases[i][0]);
    CHECK(strcmp(got, cases[i][1]) == 0);
    if (strcmp(got, cases[i][1]) != 0) fprintf(stderr, "  for %s: %s\n", cases[i][0], got);
  }
}

int main(void) {
  setup();
  test_serves();
  test_head_only();
  test_etag();
  test_missing();
  test_refused();
  test_mime();
  teardown();
  struct stat st;
  CHECK(stat(base, &st) != 0);
  UNIT_DONE();
}
