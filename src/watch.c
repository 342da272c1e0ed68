/* watch.c - see watch.h. */
#include "watch.h"

#include <dirent.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "list.h"
#include "log.h"

typedef struct dirwatch {
  uv_fs_event_t h;
  list_node_t node;
  watch_t *owner;
  char path[];
} dirwatch_t;

struct watch {
  uv_loop_t *loop;
  uv_timer_t quiet;        /* debounce */
  list_node_t dirs;
  char **roots;
  void (*cb)(void *arg, const char *path);
  void *arg;
  char changed[PATH_MAX];  /* the last changed path of the burst */
  int stopping;
};

static void free_dir(uv_handle_t *h) { free(h->data); }

static int watched(watch_t *w, const char *path) {
  for (list_node_t *n = w->dirs.next; n != &w->dirs; n = n->next)
    if (strcmp(list_entry(n, dirwatch_t, node)->path, path) == 0) return 1;
  return 0;
}

static void on_event(uv_fs_event_t *h, const char *filename, int events, int status);

/* Watches path and, recursively, the folders below it not watched yet. */
static void add_tree(watch_t *w, const char *path, int depth) {
  if (depth > 32) return;
  struct stat st;
  if (stat(path, &st) != 0) return;
  if (!watched(w, path)) {
    size_t len = strlen(path);
    dirwatch_t *d = malloc(sizeof(*d) + len + 1);
    if (d == NULL) return;
    memcpy(d->path, path, len + 1);
    d->owner = w;
    uv_fs_event_init(w->loop, &d->h);
    d->h.data = d;
    if (uv_fs_event_start(&d->h, on_event, path, 0) != 0) {
      log_warn("reload: cannot watch %s", path);
      uv_close((uv_handle_t *)&d->h, free_dir);
      return;
    }
    list_push_back(&w->dirs, &d->node);
  }
  DIR *dir = opendir(path);
  if (dir == NULL) return;
  struct dirent *e;
  while ((e = readdir(dir)) != NULL) {
    if (e->d_name[0] == '.' || strcmp(e->d_name, "node_modules") == 0) continue;
    char sub[PATH_MAX];
    if (snprintf(sub, sizeof(sub), "%s/%s", path, e->d_name) >= (int)sizeof(sub)) continue;
    struct stat st;
    if (stat(sub, &st) == 0 && S_ISDIR(st.st_mode)) add_tree(w, sub, depth + 1);
  }
  closedir(dir);
}

/* Drops every watch.  After a burst of changes the watches are made anew
 * from the tree as it is now: a folder deleted and made again (a checkout)
 * may even come back with the same inode number, and its old watch is dead;
 * rebuilding is exact and costs microseconds for a source tree.  Changes made
 * while no watch stands are not lost: the reload that follows reads the
 * files as they are. */
static void drop_all(watch_t *w) {
  while (!list_empty(&w->dirs)) {
    dirwatch_t *d = list_entry(w->dirs.next, dirwatch_t, node);
    list_remove(&d->node);
    uv_close((uv_handle_t *)&d->h, free_dir);
  }
}

static void on_quiet(uv_timer_t *t) {
  watch_t *w = t->data;
  drop_all(w);
  for (char **r = w->roots; *r; r++) add_tree(w, *r, 0);
  w->cb(w->arg, w->changed);
}

static void on_event(uv_fs_event_t *h, const char *filename, int events, int status) {
  (void)events;
  dirwatch_t *d = h->data;
  watch_t *w = d->owner;
  if (status < 0 || w->stopping) return;
  snprintf(w->changed, sizeof(w->changed), "%s/%s", d->path, filename ? filename : "");
  uv_timer_start(&w->quiet, on_quiet, WATCH_QUIET_MS, 0);
}

watch_t *watch_start(uv_loop_t *loop, const char *const *roots, void (*cb)(void *arg, const char *path),
                     void *arg) {
  watch_t *w = calloc(1, sizeof(*w));
  if (w == NULL) return NULL;
  int n = 0;
  while (roots[n]) n++;
  w->roots = calloc((size_t)n + 1, sizeof(*w->roots));
  if (w->roots == NULL) {
    free(w);
    return NULL;
  }
  for (int i = 0; i < n; i++) w->roots[i] = strdup(roots[i]);
  w->loop = loop;
  w->cb = cb;
  w->arg = arg;
  list_init(&w->dirs);
  uv_timer_init(loop, &w->quiet);
  w->quiet.data = w;
  for (int i = 0; i < n; i++) add_tree(w, w->roots[i], 0);
  return w;
}

static void free_watch(uv_handle_t *h) {
  watch_t *w = h->data;
  for (char **r = w->roots; *r; r++) free(*r);
  free(w->roots);
  free(w);
}

void watch_stop(watch_t *w) {
  if (w == NULL) return;
  w->stopping = 1;
  drop_all(w);
  uv_close((uv_handle_t *)&w->quiet, free_watch);
}
