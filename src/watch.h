/*
 * watch.h - watches folder trees for changes (for --reload).
 *
 * Linux inotify watches one folder at a time, so every folder under each
 * root gets its own uv_fs_event; folders created later are picked up after
 * each change.  Changes are debounced: an editor's save (write, rename,
 * chmod...) is one callback, WATCH_QUIET_MS after the last event.  Hidden
 * folders and node_modules are not watched.  Runs on the main thread's loop.
 */
#ifndef SLUICE_WATCH_H
#define SLUICE_WATCH_H

#include <uv.h>

#define WATCH_QUIET_MS 20

typedef struct watch watch_t;

/* Starts watching the trees under roots (NULL-terminated); cb(arg, path)
 * runs after each burst of changes with one changed path.  NULL on failure
 * (logged). */
watch_t *watch_start(uv_loop_t *loop, const char *const *roots, void (*cb)(void *arg, const char *path),
                     void *arg);

/* Stops watching; memory goes in the handles' close callbacks. */
void watch_stop(watch_t *w);

#endif
