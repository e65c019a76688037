/*
 * list — the one intrusive doubly linked list of the tree. An object that
 * can be on a list embeds a struct list_node; the list is a circular ring
 * through a head node that belongs to whoever owns the list:
 *
 *   head <-> a.node <-> b.node <-> c.node <-> (back to head)
 *   empty:  head <-> head
 *
 * Nothing is allocated: pushing and removing only relink pointers, so an
 * object can leave a list from anywhere (a timer, a callback) in O(1)
 * without knowing which list it is on.
 *
 * A node is "unlinked" when it is self-linked (list_init, or after
 * list_remove) or all zero (a calloc'ed struct never initialised): both
 * answer list_linked() false, and list_remove() on them does nothing, so a
 * struct may be removed from its list any number of times. A head must be
 * list_init'ed before use. Not thread-safe: a list belongs to one thread.
 *
 * Use:
 *   struct item { int v; struct list_node node; };
 *   struct list_node items;               list_init(&items);
 *   list_push_back(&items, &it->node);    list_remove(&it->node);
 *   struct list_node *n, *tmp;
 *   list_for_each_safe(n, tmp, &items) {
 *           struct item *it = list_entry(n, struct item, node);
 *           ... may list_remove(n) and free it ...
 *   }
 *   struct item *first = list_first_entry(&items, struct item, node);
 */
#ifndef IMAPMUX_LIST_H
#define IMAPMUX_LIST_H

#include <stdbool.h>
#include <stddef.h>

struct list_node {
	struct list_node *prev, *next;
};

/* An empty head, or a node on no list. */
static inline void list_init(struct list_node *n)
{
	n->prev = n->next = n;
}

/* Whether the list headed by head has no node. */
static inline bool list_empty(const struct list_node *head)
{
	return head->next == head;
}

/* Whether node n is on some list (false after list_init, list_remove, or
 * for an all-zero node). */
static inline bool list_linked(const struct list_node *n)
{
	return n->next != NULL && n->next != n;
}

/* Put n, which must be unlinked, between the adjacent prev and next. */
static inline void list_insert_between(struct list_node *n, struct list_node *prev,
                                       struct list_node *next)
{
	n->prev = prev;
	n->next = next;
	prev->next = n;
	next->prev = n;
}

/* Append n (unlinked) at the end of head's list. */
static inline void list_push_back(struct list_node *head, struct list_node *n)
{
	list_insert_between(n, head->prev, head);
}

/* Insert n (unlinked) at the front of head's list. */
static inline void list_push_front(struct list_node *head, struct list_node *n)
{
	list_insert_between(n, head, head->next);
}

/* Take n off whatever list it is on and leave it self-linked; nothing
 * happens when it is on none. Never pass a head. */
static inline void list_remove(struct list_node *n)
{
	if (!list_linked(n))
		return;
	n->prev->next = n->next;
	n->next->prev = n->prev;
	list_init(n);
}

/* The first or last node of head's list, NULL when it is empty. */
static inline struct list_node *list_first(const struct list_node *head)
{
	return list_empty(head) ? NULL : head->next;
}

static inline struct list_node *list_last(const struct list_node *head)
{
	return list_empty(head) ? NULL : head->prev;
}

/* The struct of type `type` whose member `member` is node (not NULL). */
#define list_entry(node, type, member) ((type *)(void *)((char *)(node)-offsetof(type, member)))

/* The struct around n (at offset off), or NULL when n is NULL. */
static inline void *list_entry_or_null(struct list_node *n, size_t off)
{
	return n == NULL ? NULL : (void *)((char *)n - off);
}

/* The first or last struct on head's list, NULL when it is empty. */
#define list_first_entry(head, type, member)                                                       \
	((type *)list_entry_or_null(list_first(head), offsetof(type, member)))
#define list_last_entry(head, type, member)                                                        \
	((type *)list_entry_or_null(list_last(head), offsetof(type, member)))

/* Every node n of head's list, front to back. The body must not remove n
 * (use list_for_each_safe for that). */
#define list_for_each(n, head) for ((n) = (head)->next; (n) != (head); (n) = (n)->next)

/* The same, reading the next node into tmp before the body runs: the body
 * may remove (and free) n, but no other node of the list. */
#define list_for_each_safe(n, tmp, head)                                                           \
	for ((n) = (head)->next, (tmp) = (n)->next; (n) != (head); (n) = (tmp), (tmp) = (n)->next)

#endif
