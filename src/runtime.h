/*
 * runtime.h - a worker's Lua VM and the coroutines (tasks) it runs.
 *
 * Every request handler, spawned function and timer callback runs as a task:
 * a Lua coroutine plus what it waits on.  A task that must wait (sleep, body,
 * a full send queue) records what to push when it is woken and yields to the
 * loop; the libuv callback that completes the wait resumes it with rt_wake().
 * This header is Lua-free so the connection layer can use it; the Lua side of
 * tasks is in lrt.h.
 */
#ifndef SLUICE_RUNTIME_H
#define SLUICE_RUNTIME_H

#include <stddef.h>

struct worker;
struct req;
typedef struct runtime runtime_t;
typedef struct task task_t;

/* Creates a VM and loads the app from the worker's config; the app's
 * options are in rt_opts().  NULL on failure with a message in err (for a
 * Lua error: "file:line: message" and a traceback). */
runtime_t *rt_new(struct worker *w, char *err, size_t errlen);

/* The options the runtime's app asked for. */
const struct app_opts *rt_opts(const runtime_t *rt);

/* Describes the loaded app for `sluice check`: its routes, one a line in
 * the order it added them, then a summary line (lua/sluice/check.lua).
 * 0 with the report in *text, or -EINVAL with the Lua error in *text;
 * the caller frees *text.  -ENOMEM (and *text NULL) when out of memory. */
int rt_describe(runtime_t *rt, char **text);

/* Retires a runtime replaced by a reload: its timers and background tasks
 * stop now; its request handlers run on in it until they end, and rt_reap
 * frees it after the last. */
void rt_retire(runtime_t *rt);

/* Frees the worker's retired runtimes that have no task left; with all set,
 * frees every retired runtime (shutdown). */
void rt_reap(struct worker *w, int all);

/* Stops the app's timers and background tasks (shutdown begins). */
void rt_stop(runtime_t *rt);

/* Kills what is left and closes the VM.  Call once every connection is
 * closed; then run the loop until its handles are closed. */
void rt_free(runtime_t *rt);

/* Runs the app's dispatcher for a request whose head is complete.
 * 0, or -ENOMEM. */
int rt_dispatch(runtime_t *rt, struct req *r);

/* Resumes a task waiting on an operation: status 0 when it completed,
 * a negative errno when it failed (the waiting function turns it into its
 * `nil, msg`). */
void rt_wake(task_t *t, int status);

/* Ends a task at once: pending to-be-closed variables are closed, its timer
 * is stopped, and its request (if any) is told the handler is done. */
void rt_kill(task_t *t);

/* Cuts the tie between a task and its request (the request goes, the task
 * runs on). */
void rt_detach_task(task_t *t);

/* Whether the task must outlive its request: it drains an upstream
 * transfer that asked for it (drain_on_disconnect). */
int rt_draining(task_t *t);

/* Makes every Lua handle on r see "closed" (r is about to be freed). */
void rt_detach_handles(struct req *r);

/* The budget hook's installer, called from the watchdog signal handler on
 * the worker's own thread: makes the coroutine co raise an error at its
 * next instruction. */
void rt_interrupt(void *co);

#endif
