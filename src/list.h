/*
 * list.h - intrusive doubly linked lists.
 *
 * A node lives inside the object it links, so putting an object on a list
 * allocates nothing and removing it is O(1).  A detached node points at
 * itself; list_remove() on a detached node is a no-op, which lets callers
 * remove without first asking whether the object is on a list.
 */
#ifndef SLUICE_LIST_H
#define SLUICE_LIST_H

#include <stddef.h>

typedef struct list_node {
  struct list_node *prev, *next;
} list_node_t;

#define LIST_INIT(name) {&(name), &(name)}
#define list_entry(node, type, member) ((type *)((char *)(node) - offsetof(type, member)))

static inline void list_init(list_node_t *n) { n->prev = n->next = n; }
static inline int list_empty(const list_node_t *head) { return head->next == head; }
static inline int list_linked(const list_node_t *n) { return n->next != n; }

/* Appends n at the tail of head's list (n must be detached). */
static inline void list_push_back(list_node_t *head, list_node_t *n) {
  n->prev = head->prev;
  n->next = head;
  head->prev->next = n;
  head->prev = n;
}

/* Detaches n from whatever list holds it. */
static inline void list_remove(list_node_t *n) {
  n->prev->next = n->next;
  n->next->prev = n->prev;
  n->prev = n->next = n;
}

/* Moves n (attached or not) to the tail of head's list. */
static inline void list_move_back(list_node_t *head, list_node_t *n) {
  list_remove(n);
  list_push_back(head, n);
}

/* Moves every node of from onto the tail of to; from becomes empty. */
static inline void list_splice(list_node_t *to, list_node_t *from) {
  if (list_empty(from)) return;
  from->next->prev = to->prev;
  to->prev->next = from->next;
  from->prev->next = to;
  to->prev = from->prev;
  list_init(from);
}

#endif
