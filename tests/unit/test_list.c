/*
 * test_list — common/list.h: table cases (a script of pushes and removes,
 * the order it must leave), the unlinked states (self-linked, all zero,
 * removed twice), safe iteration that frees as it goes, and a randomized
 * run against an array model with nodes moving between two lists, checking
 * every link in both directions after each step.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "list.h"

struct item {
	int v;
	struct list_node node;
	int pad; /* node not last: list_entry must subtract its offset */
};

#define NITEMS 10

/* The values on head's list, front to back, as "1 2 3" ("" when empty);
 * also checks that every back link matches its forward link. */
static void contents(const struct list_node *head, char *out, size_t outlen)
{
	const struct list_node *n, *prev = head;
	size_t used = 0;

	out[0] = '\0';
	for (n = head->next; n != head; prev = n, n = n->next) {
		const struct item *it = list_entry(n, const struct item, node);
		int w;

		assert_ptr_equal(n->prev, prev);
		assert_true(list_linked(n));
		w = snprintf(out + used, outlen - used, "%s%d", used ? " " : "", it->v);
		assert_true(w > 0 && (size_t)w < outlen - used);
		used += (size_t)w;
	}
	assert_ptr_equal(head->prev, prev);
}

/*
 * Table cases: each op is a letter and an item number, applied to one list:
 * B push_back, F push_front, R remove (of an item on the list or not).
 */
static const struct {
	const char *ops;
	const char *want;
	int first, last; /* -1: empty */
} cases[] = {
    {"", "", -1, -1},
    {"B1", "1", 1, 1},
    {"F1", "1", 1, 1},
    {"B1 B2 B3", "1 2 3", 1, 3},
    {"F1 F2 F3", "3 2 1", 3, 1},
    {"B1 F2 B3 F4", "4 2 1 3", 4, 3},
    {"B1 B2 B3 R1", "2 3", 2, 3},
    {"B1 B2 B3 R2", "1 3", 1, 3},
    {"B1 B2 B3 R3", "1 2", 1, 2},
    {"B1 R1", "", -1, -1},
    {"B1 R1 R1", "", -1, -1},           /* removing twice is harmless */
    {"R5", "", -1, -1},                 /* never linked */
    {"B1 B2 R5 R1", "2", 2, 2},         /* removing an unlinked one leaves the list */
    {"B1 R1 B1", "1", 1, 1},            /* a removed node can go back */
    {"B1 B2 R1 F1 R2 B2", "1 2", 1, 2}, /* moved to the other end */
};

static void test_table(void **state)
{
	(void)state;
	for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
		struct item items[NITEMS];
		struct list_node head;
		char got[128];
		const char *op = cases[c].ops;

		for (int i = 0; i < NITEMS; i++) {
			items[i].v = i;
			list_init(&items[i].node);
		}
		list_init(&head);
		while (*op != '\0') {
			struct list_node *n = &items[op[1] - '0'].node;

			if (op[0] == 'B')
				list_push_back(&head, n);
			else if (op[0] == 'F')
				list_push_front(&head, n);
			else
				list_remove(n);
			op += op[2] == ' ' ? 3 : 2;
		}
		contents(&head, got, sizeof(got));
		if (strcmp(got, cases[c].want) != 0)
			fail_msg("case %zu \"%s\": got \"%s\", want \"%s\"", c, cases[c].ops, got,
			         cases[c].want);
		assert_int_equal(list_empty(&head), cases[c].first < 0);
		if (cases[c].first < 0) {
			assert_null(list_first(&head));
			assert_null(list_last(&head));
			assert_null(list_first_entry(&head, struct item, node));
			assert_null(list_last_entry(&head, struct item, node));
		} else {
			assert_int_equal(list_first_entry(&head, struct item, node)->v,
			                 cases[c].first);
			assert_int_equal(list_last_entry(&head, struct item, node)->v,
			                 cases[c].last);
			assert_ptr_equal(list_first(&head), &items[cases[c].first].node);
			assert_ptr_equal(list_last(&head), &items[cases[c].last].node);
		}
	}
}

/* The unlinked states: self-linked, all zero (calloc), and after removal. */
static void test_unlinked(void **state)
{
	struct item *z = calloc(1, sizeof(*z));
	struct item a = {.v = 1};
	struct list_node head;
	char got[32];

	(void)state;
	assert_non_null(z);
	list_init(&head);
	assert_false(list_linked(&head));
	assert_true(list_empty(&head));
	/* A zeroed node is on no list; removing it does nothing. */
	assert_false(list_linked(&z->node));
	list_remove(&z->node);
	assert_null(z->node.next);
	assert_null(z->node.prev);
	/* It can be pushed as it is. */
	z->v = 7;
	list_push_back(&head, &z->node);
	list_init(&a.node);
	list_push_back(&head, &a.node);
	contents(&head, got, sizeof(got));
	assert_string_equal(got, "7 1");
	assert_true(list_linked(&z->node));
	/* Removed: self-linked, and again removable. */
	list_remove(&z->node);
	assert_ptr_equal(z->node.next, &z->node);
	assert_ptr_equal(z->node.prev, &z->node);
	assert_false(list_linked(&z->node));
	list_remove(&z->node);
	contents(&head, got, sizeof(got));
	assert_string_equal(got, "1");
	/* The last node out leaves the head empty again. */
	list_remove(&a.node);
	assert_true(list_empty(&head));
	assert_ptr_equal(head.next, &head);
	assert_ptr_equal(head.prev, &head);
	free(z);
}

/* list_for_each_safe: the body may remove and free the current node. */
static void test_for_each_safe_frees(void **state)
{
	struct list_node head, *n, *tmp;
	char got[64];
	int seen = 0, sum = 0;

	(void)state;
	list_init(&head);
	for (int i = 0; i < 8; i++) {
		struct item *it = calloc(1, sizeof(*it));
		assert_non_null(it);
		it->v = i;
		list_push_back(&head, &it->node);
	}
	/* Drop the odd ones while walking. */
	list_for_each_safe (n, tmp, &head) {
		struct item *it = list_entry(n, struct item, node);
		seen++;
		if (it->v % 2 == 1) {
			list_remove(n);
			free(it);
		}
	}
	assert_int_equal(seen, 8);
	contents(&head, got, sizeof(got));
	assert_string_equal(got, "0 2 4 6");
	list_for_each (n, &head) {
		sum += list_entry(n, struct item, node)->v;
	}
	assert_int_equal(sum, 12);
	/* And all of them (the last one leaves the head empty mid-walk). */
	list_for_each_safe (n, tmp, &head) {
		list_remove(n);
		free(list_entry(n, struct item, node));
	}
	assert_true(list_empty(&head));
}

/* ---- randomized: two lists against two arrays ---- */

#define RND_ITEMS 24
#define RND_STEPS 4000

static uint64_t rnd_state;

/* xorshift64*: reproducible from the seed, no libc state. */
static uint32_t rnd(uint32_t n)
{
	rnd_state ^= rnd_state >> 12;
	rnd_state ^= rnd_state << 25;
	rnd_state ^= rnd_state >> 27;
	return (uint32_t)((rnd_state * 0x2545F4914F6CDD1Dull) >> 32) % n;
}

struct model {
	int order[RND_ITEMS]; /* item numbers, front to back */
	int len;
};

static int model_find(const struct model *m, int v)
{
	for (int i = 0; i < m->len; i++) {
		if (m->order[i] == v)
			return i;
	}
	return -1;
}

static void model_insert(struct model *m, int at, int v)
{
	memmove(&m->order[at + 1], &m->order[at], (size_t)(m->len - at) * sizeof(int));
	m->order[at] = v;
	m->len++;
}

static void model_delete(struct model *m, int at)
{
	memmove(&m->order[at], &m->order[at + 1], (size_t)(m->len - at - 1) * sizeof(int));
	m->len--;
}

/* Every link of head's list, both ways, against the model. */
static void check(const struct list_node *head, const struct model *m, uint64_t seed, int step)
{
	const struct list_node *n = head;

	for (int i = 0; i < m->len; i++) {
		n = n->next;
		if (n == head || list_entry(n, const struct item, node)->v != m->order[i])
			fail_msg("seed %llu step %d: position %d differs", (unsigned long long)seed,
			         step, i);
		assert_ptr_equal(n->next->prev, n);
	}
	assert_ptr_equal(n->next, head);
	assert_ptr_equal(head->prev, n);
	n = head;
	for (int i = m->len - 1; i >= 0; i--) {
		n = n->prev;
		assert_int_equal(list_entry(n, const struct item, node)->v, m->order[i]);
	}
	assert_int_equal(list_empty(head), m->len == 0);
}

static void one_seed(uint64_t seed)
{
	struct item items[RND_ITEMS];
	struct list_node heads[2];
	struct model models[2] = {{.len = 0}, {.len = 0}};

	rnd_state = seed * 0x9E3779B97F4A7C15ull + 1;
	/* Half the items start all zero, half list_init'ed: both are unlinked. */
	memset(items, 0, sizeof(items));
	for (int i = 0; i < RND_ITEMS; i++) {
		items[i].v = i;
		if (i % 2 == 0)
			list_init(&items[i].node);
	}
	list_init(&heads[0]);
	list_init(&heads[1]);
	for (int step = 0; step < RND_STEPS; step++) {
		int v = (int)rnd(RND_ITEMS), k = (int)rnd(2), op = (int)rnd(4);
		struct list_node *node = &items[v].node;
		int where = -1, at;

		for (int j = 0; j < 2; j++) {
			if (model_find(&models[j], v) >= 0)
				where = j;
		}
		assert_int_equal(list_linked(node), where >= 0);
		if (op == 0 || op == 1) {
			/* Push, to the back or the front (removing it first if on a list). */
			if (where >= 0) {
				list_remove(node);
				model_delete(&models[where], model_find(&models[where], v));
			}
			if (op == 0) {
				list_push_back(&heads[k], node);
				model_insert(&models[k], models[k].len, v);
			} else {
				list_push_front(&heads[k], node);
				model_insert(&models[k], 0, v);
			}
		} else if (op == 2) {
			/* Remove, linked or not. */
			list_remove(node);
			if (where >= 0)
				model_delete(&models[where], model_find(&models[where], v));
		} else {
			/* Walk list k, removing each node with a chance of 1/3. */
			struct list_node *n, *tmp;
			at = 0;
			list_for_each_safe (n, tmp, &heads[k]) {
				if (rnd(3) == 0) {
					list_remove(n);
					model_delete(&models[k], at);
				} else {
					at++;
				}
			}
		}
		check(&heads[0], &models[0], seed, step);
		check(&heads[1], &models[1], seed, step);
		assert_int_equal(list_first(&heads[k]) != NULL, models[k].len > 0);
	}
}

static void test_random(void **state)
{
	(void)state;
	for (uint64_t seed = 1; seed <= 200; seed++)
		one_seed(seed);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_table),
	    cmocka_unit_test(test_unlinked),
	    cmocka_unit_test(test_for_each_safe_frees),
	    cmocka_unit_test(test_random),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
