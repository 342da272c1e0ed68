/* rpoll.c - see rpoll.h. */
#include "rpoll.h"

#include <stdlib.h>
#include <sys/ioctl.h>

typedef struct rpoll {
  redisAsyncContext *ac; /* NULL once hiredis freed the context */
  uv_poll_t poll;
  int events;
  int max_reads;         /* reads of a readable socket per loop turn */
} rpoll_t;

/* The socket is ready: hiredis writes what it has queued, then reads until
 * nothing is left to read (or max_reads reads), running the replies'
 * callbacks as it goes; any of them may free the context. */
static void rpoll_cb(uv_poll_t *h, int status, int events) {
  rpoll_t *p = h->data;
  if (status < 0 || p->ac == NULL) return;
  if (events & UV_WRITABLE) redisAsyncHandleWrite(p->ac);
  if (!(events & UV_READABLE)) return;
  for (int i = 0; i < p->max_reads && p->ac != NULL; i++) {
    redisAsyncHandleRead(p->ac);
    int pending = 0;
    if (p->ac == NULL || ioctl(p->ac->c.fd, FIONREAD, &pending) != 0 || pending <= 0) break;
  }
}

/* Watches the events p->events asks for (none: stops watching). */
static void rpoll_update(rpoll_t *p) {
  if (p->events)
    uv_poll_start(&p->poll, p->events, rpoll_cb);
  else
    uv_poll_stop(&p->poll);
}

static void rpoll_add_read(void *d) {
  rpoll_t *p = d;
  p->events |= UV_READABLE;
  rpoll_update(p);
}

static void rpoll_del_read(void *d) {
  rpoll_t *p = d;
  p->events &= ~UV_READABLE;
  rpoll_update(p);
}

static void rpoll_add_write(void *d) {
  rpoll_t *p = d;
  p->events |= UV_WRITABLE;
  rpoll_update(p);
}

static void rpoll_del_write(void *d) {
  rpoll_t *p = d;
  p->events &= ~UV_WRITABLE;
  rpoll_update(p);
}

static void rpoll_free(uv_handle_t *h) { free(h->data); }

/* hiredis is freeing the context: the poll goes, in its close callback. */
static void rpoll_cleanup(void *d) {
  rpoll_t *p = d;
  p->ac = NULL;
  uv_close((uv_handle_t *)&p->poll, rpoll_free);
}

int rpoll_attach(redisAsyncContext *ac, uv_loop_t *loop, int max_reads) {
  rpoll_t *p = calloc(1, sizeof(*p));
  if (p == NULL) return -1;
  if (uv_poll_init(loop, &p->poll, ac->c.fd) != 0) {
    free(p);
    return -1;
  }
  p->ac = ac;
  p->max_reads = max_reads > 0 ? max_reads : 1;
  p->poll.data = p;
  ac->ev.data = p;
  ac->ev.addRead = rpoll_add_read;
  ac->ev.delRead = rpoll_del_read;
  ac->ev.addWrite = rpoll_add_write;
  ac->ev.delWrite = rpoll_del_write;
  ac->ev.cleanup = rpoll_cleanup;
  return 0;
}
