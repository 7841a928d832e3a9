/* SPDX-License-Identifier: MIT */
#ifndef AG_ENGINE_LIB_LIST_H
#define AG_ENGINE_LIB_LIST_H

/*
 * An intrusive, circular, doubly linked list, as the kernel's list.h: the
 * links live inside the listed object, so adding and removing never
 * allocate and cannot fail.  A head is a struct ag__list that is no
 * object's member; an empty list's head points at itself.  Nothing here
 * locks: the owner of the list says which lock guards it.
 */
#include <stdbool.h>
#include <stddef.h>

struct ag__list {
	struct ag__list *next, *prev;
};

#define AG_LIST_INIT(name)       \
	{                        \
		&(name), &(name) \
	}

static inline void ag__list_init(struct ag__list *h)
{
	h->next = h;
	h->prev = h;
}

static inline bool ag__list_empty(const struct ag__list *h)
{
	return h->next == h;
}

static inline void ag__list_insert(struct ag__list *n, struct ag__list *prev,
				   struct ag__list *next)
{
	next->prev = n;
	n->next = next;
	n->prev = prev;
	prev->next = n;
}

/* n becomes the first entry */
static inline void ag__list_add(struct ag__list *n, struct ag__list *h)
{
	ag__list_insert(n, h, h->next);
}

/* n becomes the last entry: a FIFO queue pushes here and takes the first */
static inline void ag__list_add_tail(struct ag__list *n, struct ag__list *h)
{
	ag__list_insert(n, h->prev, h);
}

/* unlinks n; n reads as empty afterwards, so a second del is harmless */
static inline void ag__list_del(struct ag__list *n)
{
	n->next->prev = n->prev;
	n->prev->next = n->next;
	ag__list_init(n);
}

#define ag__list_entry(ptr, type, member) \
	((type *)((char *)(ptr)-offsetof(type, member)))

/* pos: a struct ag__list *; the body must not unlink pos */
#define ag__list_for_each(pos, h) \
	for ((pos) = (h)->next; (pos) != (h); (pos) = (pos)->next)

#endif /* AG_ENGINE_LIB_LIST_H */
