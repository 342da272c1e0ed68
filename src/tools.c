/* tools.c - see tools.h. */
#include "tools.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <uv.h>

#include "hub.h"
#include "runtime.h"
#include "worker.h"

static const char check_usage[] =
    "usage: sluice check APP_DIR\n"
    "\n"
    "Loads the app in APP_DIR as a worker would, without listening on a port or\n"
    "connecting to Redis, lists its routes and exits: 0 when it loads, 1 with\n"
    "the error (file:line: message) on stderr when it does not.\n";

static const char new_usage[] =
    "usage: sluice new NAME\n"
    "\n"
    "Makes a new app in the folder NAME (which must not exist yet): app.lua, a\n"
    "page in public/, and tests in spec/ that `busted` runs from the folder.\n";

/* Prints a subcommand's usage for --help (exit 0) or after a mistake
 * (exit 2), and returns that exit code. */
static int usage(const char *text, int help) {
  fputs(text, help ? stdout : stderr);
  return help ? 0 : 2;
}

/* The one operand of a subcommand (argv[2]), or NULL with *rc set to the
 * exit code after printing its usage: --help, nothing, an option or more
 * than one operand. */
static const char *operand(int argc, char **argv, const char *text, int *rc) {
  int help = argc >= 3 && (strcmp(argv[2], "--help") == 0 || strcmp(argv[2], "-h") == 0);
  if (help || argc != 3 || argv[2][0] == '-' || argv[2][0] == '\0') {
    *rc = usage(text, help);
    return NULL;
  }
  return argv[2];
}

/* ------------------------------------------------------------- check */

/* Loads the app in cfg's app_dir in a worker of its own that never
 * listens, and prints the report or the load error.  Returns the exit
 * code (0 loaded, 1 not). */
static int check_load(server_t *srv, worker_t *w) {
  w->id = 1;
  w->srv = srv;
  w->cfg = &srv->cfg;
  list_init(&w->retired);
  int rc = 1;
  if (uv_loop_init(&w->loop) != 0) {
    fprintf(stderr, "sluice: cannot make an event loop\n");
    return 1;
  }
  char err[8192];
  runtime_t *rt = rt_new(w, err, sizeof(err));
  if (rt == NULL) {
    fprintf(stderr, "%s\n", err);
  } else {
    char *text = NULL;
    int drc = rt_describe(rt, &text);
    fputs(text ? text : "out of memory\n", drc == 0 ? stdout : stderr);
    if (drc != 0 && text != NULL) fputc('\n', stderr);
    free(text);
    rc = drc == 0 ? 0 : 1;
    rt_free(rt);
  }
  uv_run(&w->loop, UV_RUN_DEFAULT); /* the close callbacks of the app's handles */
  uv_loop_close(&w->loop);
  return rc;
}

int tools_check(int argc, char **argv, const char *lua_dir) {
  int rc;
  const char *app = operand(argc, argv, check_usage, &rc);
  if (app == NULL) return rc;
  struct stat st;
  if (stat(app, &st) != 0 || !S_ISDIR(st.st_mode)) {
    fprintf(stderr, "sluice: app directory '%s' does not exist (usage: sluice check APP_DIR)\n",
            app);
    return 2;
  }
  char app_lua[PATH_MAX + 16];
  snprintf(app_lua, sizeof(app_lua), "%s/app.lua", app);
  if (access(app_lua, R_OK) != 0) {
    fprintf(stderr, "sluice: '%s' has no app.lua\n", app);
    return 1;
  }
  server_t *srv = calloc(1, sizeof(*srv));
  worker_t *w = calloc(1, sizeof(*w));
  rc = 1;
  if (srv == NULL || w == NULL) {
    fprintf(stderr, "sluice: out of memory\n");
  } else if (!realpath(app, srv->cfg.app_dir)) {
    fprintf(stderr, "sluice: cannot resolve '%s': %s\n", app, strerror(errno));
  } else {
    /* No port, no Redis: only what loading the app reads is filled in. */
    srv->cfg.workers = 1;
    snprintf(srv->cfg.lua_dir, sizeof(srv->cfg.lua_dir), "%s", lua_dir);
    srv->hub = hub_new(1);
    if (srv->hub == NULL)
      fprintf(stderr, "sluice: out of memory\n");
    else
      rc = check_load(srv, w);
    if (srv->hub != NULL) hub_free(srv->hub);
  }
  free(w);
  free(srv);
  return rc;
}

/* --------------------------------------------------------------- new */

/* A template placeholder, {{key}}, and what it is replaced with. */
typedef struct subst {
  const char *key;
  const char *value;
} subst_t;

/* Whether name can name an app everywhere the templates put it (Lua
 * comments and strings, HTML text): letters, digits, '.', '_', '-' and
 * any non-ASCII byte, not starting with '.' or '-'. */
static int valid_name(const char *name) {
  if (name[0] == '\0' || name[0] == '.' || name[0] == '-') return 0;
  for (const unsigned char *p = (const unsigned char *)name; *p; p++) {
    if (!(*p >= 0x80 || (*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'z') ||
          (*p >= 'A' && *p <= 'Z') || *p == '.' || *p == '_' || *p == '-'))
      return 0;
  }
  return 1;
}

/* Writes s into out (of outlen bytes) escaped for the inside of a Lua
 * string literal between double quotes.  0, or -ENAMETOOLONG. */
static int lua_escape(const char *s, char *out, size_t outlen) {
  size_t n = 0;
  for (; *s; s++) {
    const char *rep = *s == '\\' ? "\\\\" : *s == '"' ? "\\\"" : *s == '\n' ? "\\n" : NULL;
    size_t len = rep ? strlen(rep) : 1;
    if (n + len >= outlen) return -ENAMETOOLONG;
    memcpy(out + n, rep ? rep : s, len);
    n += len;
  }
  out[n] = '\0';
  return 0;
}

/* Reads the whole file at path into a new NUL-terminated buffer (*out, the
 * caller frees it).  0, or a negative errno. */
static int read_all(const char *path, char **out) {
  FILE *f = fopen(path, "rb");
  if (f == NULL) return -errno;
  size_t cap = 4096, len = 0;
  char *buf = malloc(cap);
  int rc = 0;
  while (buf != NULL) {
    len += fread(buf + len, 1, cap - len - 1, f);
    if (len < cap - 1) break;
    char *bigger = realloc(buf, cap * 2);
    if (bigger == NULL) free(buf);
    buf = bigger;
    cap *= 2;
  }
  if (buf == NULL) rc = -ENOMEM;
  else if (ferror(f)) rc = -EIO;
  fclose(f);
  if (rc != 0) {
    free(buf);
    return rc;
  }
  buf[len] = '\0';
  *out = buf;
  return 0;
}

/* Writes text to f with every {{key}} of subs replaced by its value
 * (other braces are kept as they are).  0, or -EIO. */
static int write_substituted(FILE *f, const char *text, const subst_t *subs) {
  const char *p = text;
  const char *open;
  while ((open = strstr(p, "{{")) != NULL) {
    const subst_t *s = subs;
    while (s->key != NULL) {
      size_t klen = strlen(s->key);
      if (strncmp(open + 2, s->key, klen) == 0 && strncmp(open + 2 + klen, "}}", 2) == 0) break;
      s++;
    }
    size_t upto = (size_t)(open - p) + (s->key ? 0 : 2);
    fwrite(p, 1, upto, f);
    if (s->key != NULL) {
      fputs(s->value, f);
      p = open + 2 + strlen(s->key) + 2;
    } else {
      p += upto;
    }
  }
  fputs(p, f);
  return ferror(f) ? -EIO : 0;
}

/* Copies the template file src to the new file dst, substituting subs.
 * 0, or a negative errno. */
static int copy_file(const char *src, const char *dst, const subst_t *subs) {
  char *text = NULL;
  int rc = read_all(src, &text);
  if (rc != 0) return rc;
  int fd = open(dst, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
  FILE *f = fd >= 0 ? fdopen(fd, "wb") : NULL;
  if (f == NULL) {
    rc = -errno;
    if (fd >= 0) close(fd);
  } else {
    rc = write_substituted(f, text, subs);
    if (fclose(f) != 0 && rc == 0) rc = -errno;
  }
  free(text);
  return rc;
}

/* Writes prefix + s into out as one shell word: in single quotes, each
 * quote in it written '\''.  Truncates to fit (out has at least 8 bytes). */
static void shell_quote(const char *s, const char *prefix, char *out, size_t cap) {
  size_t o = 0;
  out[o++] = '\'';
  for (const char *p = prefix; *p && o + 6 < cap; p++) out[o++] = *p;
  for (const char *p = s; *p && o + 6 < cap; p++) {
    if (*p == '\'') {
      memcpy(out + o, "'\\''", 4);
      o += 4;
    } else {
      out[o++] = *p;
    }
  }
  out[o++] = '\'';
  out[o] = '\0';
}

/* Copies the template folder src into the existing folder dst, in name
 * order, naming each file made as shown/... on stdout.
 * 0, or a negative errno with the path it failed on in failed. */
static int copy_tree(const char *src, const char *dst, const char *shown, const subst_t *subs,
                     char *failed, size_t failedlen) {
  struct dirent **names;
  int n = scandir(src, &names, NULL, alphasort);
  if (n < 0) {
    snprintf(failed, failedlen, "%s", src);
    return -errno;
  }
  int rc = 0;
  for (int i = 0; i < n; i++) {
    const char *name = names[i]->d_name;
    if (rc == 0 && strcmp(name, ".") != 0 && strcmp(name, "..") != 0) {
      char from[PATH_MAX], to[PATH_MAX], show[PATH_MAX];
      snprintf(from, sizeof(from), "%s/%s", src, name);
      snprintf(to, sizeof(to), "%s/%s", dst, name);
      snprintf(show, sizeof(show), "%s/%s", shown, name);
      struct stat st;
      if (stat(from, &st) != 0) {
        rc = -errno;
      } else if (S_ISDIR(st.st_mode)) {
        rc = mkdir(to, 0777) == 0 ? copy_tree(from, to, show, subs, failed, failedlen) : -errno;
      } else {
        rc = copy_file(from, to, subs);
        if (rc == 0) printf("created %s\n", show);
      }
      if (rc != 0 && failed[0] == '\0') snprintf(failed, failedlen, "%s", to);
    }
    free(names[i]);
  }
  free(names);
  return rc;
}

int tools_new(int argc, char **argv, const char *lua_dir) {
  int rc;
  const char *arg = operand(argc, argv, new_usage, &rc);
  if (arg == NULL) return rc;
  /* The folder as given, less trailing slashes; its last part names the app. */
  char dir[PATH_MAX];
  snprintf(dir, sizeof(dir), "%s", arg);
  for (size_t n = strlen(dir); n > 1 && dir[n - 1] == '/'; n--) dir[n - 1] = '\0';
  const char *slash = strrchr(dir, '/');
  const char *name = slash ? slash + 1 : dir;
  if (!valid_name(name)) {
    fprintf(stderr, "sluice: '%s' cannot name an app: use letters, digits, '.', '_' and '-',\n"
                    "not starting with '.' or '-'\n", name);
    return 2;
  }
  struct stat st;
  if (lstat(dir, &st) == 0) {
    fprintf(stderr, "sluice: '%s' already exists; sluice new makes a new folder\n", dir);
    return 1;
  }

  char templates[PATH_MAX], lib[PATH_MAX], exe[PATH_MAX];
  size_t exelen = sizeof(exe);
  snprintf(templates, sizeof(templates), "%s/sluice/templates/app", lua_dir);
  if (!realpath(lua_dir, lib) || stat(templates, &st) != 0 || !S_ISDIR(st.st_mode)) {
    fprintf(stderr, "sluice: no app templates in %s (is sluice's Lua library installed?)\n",
            templates);
    return 1;
  }
  if (uv_exepath(exe, &exelen) != 0) exe[0] = '\0';
  /* Paths land in Lua strings (.busted, spec/app_spec.lua): escaped for them. */
  char lib_lua[2 * PATH_MAX], exe_lua[2 * PATH_MAX];
  if (lua_escape(lib, lib_lua, sizeof(lib_lua)) != 0 || lua_escape(exe, exe_lua, sizeof(exe_lua)) != 0) {
    fprintf(stderr, "sluice: path too long\n");
    return 1;
  }
  const subst_t subs[] = {
      {"name", name}, {"lua_dir", lib_lua}, {"sluice_bin", exe_lua}, {NULL, NULL}};

  if (mkdir(dir, 0777) != 0) {
    fprintf(stderr, "sluice: cannot make '%s': %s\n", dir, strerror(errno));
    return 1;
  }
  char failed[PATH_MAX] = "";
  rc = copy_tree(templates, dir, dir, subs, failed, sizeof(failed));
  if (rc != 0) {
    fprintf(stderr, "sluice: cannot write '%s': %s (the app in '%s' is incomplete)\n", failed,
            strerror(-rc), dir);
    return 1;
  }
  /* As a shell takes them: quoted, and "./NAME" for a bare name, which
   * could be a subcommand ("check", "new"). */
  char quoted[2 * PATH_MAX + 8];
  shell_quote(dir, strchr(dir, '/') ? "" : "./", quoted, sizeof(quoted));
  printf("\nrun it:   %s %s\ntest it:  cd %s && busted\n", argv[0], quoted, quoted);
  return 0;
}
