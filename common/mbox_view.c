/*
 * mbox_view — see mbox_view.h. The messages are runs in sequence order:
 *
 *   runs: [ seq 1  n 3   uid 10  \Seen      ]  messages 1..3, UIDs 10, 11, 12
 *         [ seq 4  n 1   uid 15  \Seen $Junk]  message 4, UID 15
 *         [ seq 5  n 40  uid 0   -          ]  messages 5..44, from the last
 *                                               EXISTS, UIDs not fetched yet
 *
 * A run is messages that share flags, keywords and MODSEQ and whose UIDs are
 * consecutive (uid, uid+1, ...) or all unknown (uid 0). Its flags word holds
 * the system flags in bits 0..4 and keyword i in bit 5 + i.
 *
 * Invariants (mbox_view_check tests every one):
 *   - nruns <= cap <= MBOX_VIEW_MAX_RUNS; runs is NULL when cap is 0.
 *   - runs[0].seq is 1, every run has n >= 1 and starts where the one
 *     before ends; the n add up to count <= MBOX_VIEW_MAX.
 *   - A known run's UIDs do not wrap; between two known messages at
 *     sequence numbers p < q, uid(q) - uid(p) >= q - p (UIDs ascend, and
 *     the unknown messages between them leave room for theirs).
 *   - Canonical: no two neighbours could be one run, so a view has the
 *     fewest runs that describe it and compact storage stays compact.
 *   - Flags hold MBOX_F_ALL and keyword bits below nkw only; a MODSEQ is 0
 *     or above the floor.
 *   - unknown counts the messages in unknown runs; last_known is the
 *     sequence number of the last message with a known UID (0: none), so
 *     every message after it is unknown: a FETCH 1:* filling in the UIDs
 *     after a big EXISTS finds it has no upper neighbour in O(1).
 *   - Every mutator checks, and reserves the runs it may need, first and
 *     changes afterwards, so a refused (-1) call leaves the view as it was.
 *
 * The diff walks old and now together by UID (both ascending), a segment
 * (the rest of a run) at a time, so two equal views of any size compare in
 * O(runs); its output is bounded by the two counts.
 */
#include "mbox_view.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "zone.h"

#define KW_SHIFT 5u

struct mbox_run {
	uint64_t modseq; /* of every message in it; 0 = not known */
	uint32_t seq;    /* sequence number of its first message */
	uint32_t n;      /* messages, >= 1 */
	uint32_t uid;    /* UID of its first message, 0 = all unknown */
	uint32_t fl;     /* MBOX_F_* | keyword bits << KW_SHIFT */
};

struct mbox_kw {
	char *name;
	size_t len;
};

struct mbox_view {
	uint32_t uidvalidity;
	uint32_t uidnext;
	uint64_t highestmodseq;
	uint64_t floor;
	struct mbox_run *runs;
	uint32_t nruns;
	uint32_t cap;
	uint32_t count;
	uint32_t unknown;
	uint32_t last_known;
	bool nomodseq;
	bool readonly;
	bool inexact;
	uint8_t *name;
	size_t name_len;
	struct mbox_kw *kw; /* MBOX_KW_MAX slots, allocated with the first keyword */
	unsigned nkw;
};

static void view_free_parts(struct mbox_view *v)
{
	zfree(v->runs, (size_t)v->cap * sizeof(*v->runs));
	zfree(v->name, v->name_len);
	if (v->kw != NULL) {
		for (unsigned i = 0; i < v->nkw; i++)
			zfree(v->kw[i].name, v->kw[i].len);
		zfree(v->kw, MBOX_KW_MAX * sizeof(*v->kw));
	}
}

int mbox_view_init(struct mbox_view **v_r)
{
	struct mbox_view *v = zalloc(sizeof(*v));

	*v_r = v;
	return v == NULL ? -1 : 0;
}

void mbox_view_reset(struct mbox_view *v)
{
	view_free_parts(v);
	memset(v, 0, sizeof(*v));
}

void mbox_view_clear_messages(struct mbox_view *v)
{
	zfree(v->runs, (size_t)v->cap * sizeof(*v->runs));
	v->runs = NULL;
	v->nruns = v->cap = 0;
	v->count = v->unknown = v->last_known = 0;
	v->inexact = false;
}

void mbox_view_destroy(struct mbox_view **vp)
{
	if (vp == NULL || *vp == NULL)
		return;
	view_free_parts(*vp);
	zfree(*vp, sizeof(**vp));
	*vp = NULL;
}

int mbox_view_clone(const struct mbox_view *src, struct mbox_view **v_r)
{
	struct mbox_view *v = zalloc(sizeof(*v));

	*v_r = NULL;
	if (v == NULL)
		return -1;
	*v = *src;
	/* No pointer of src's may stay: destroy on failure frees v's own. */
	v->runs = NULL;
	v->cap = v->nruns = 0;
	v->name = NULL;
	v->name_len = 0;
	v->kw = NULL;
	v->nkw = 0;
	if (src->nruns > 0) {
		v->runs = zalloc((size_t)src->nruns * sizeof(*v->runs));
		if (v->runs == NULL)
			goto fail;
		memcpy(v->runs, src->runs, (size_t)src->nruns * sizeof(*v->runs));
		v->cap = v->nruns = src->nruns;
	}
	if (src->name_len > 0) {
		v->name = zalloc(src->name_len);
		if (v->name == NULL)
			goto fail;
		memcpy(v->name, src->name, src->name_len);
		v->name_len = src->name_len;
	}
	if (src->kw != NULL) {
		v->kw = zalloc(MBOX_KW_MAX * sizeof(*v->kw));
		if (v->kw == NULL)
			goto fail;
		for (unsigned i = 0; i < src->nkw; i++) {
			v->kw[i].name = zalloc(src->kw[i].len);
			if (v->kw[i].name == NULL)
				goto fail;
			memcpy(v->kw[i].name, src->kw[i].name, src->kw[i].len);
			v->kw[i].len = src->kw[i].len;
			v->nkw = i + 1;
		}
	}
	*v_r = v;
	return 0;
fail:
	mbox_view_destroy(&v);
	return -1;
}

int mbox_view_set_name(struct mbox_view *v, const uint8_t *name, size_t len)
{
	uint8_t *p = NULL;

	if (len > MBOX_NAME_MAX)
		return -1;
	if (len > 0) {
		p = zalloc(len);
		if (p == NULL)
			return -1;
		memcpy(p, name, len);
	}
	zfree(v->name, v->name_len);
	v->name = p;
	v->name_len = len;
	return 0;
}

const uint8_t *mbox_view_name(const struct mbox_view *v, size_t *len_r)
{
	*len_r = v->name_len;
	return v->name;
}

void mbox_view_set_readonly(struct mbox_view *v, bool readonly)
{
	v->readonly = readonly;
}

bool mbox_view_readonly(const struct mbox_view *v)
{
	return v->readonly;
}

void mbox_view_set_uidvalidity(struct mbox_view *v, uint32_t uidvalidity)
{
	v->uidvalidity = uidvalidity;
}

void mbox_view_set_uidnext(struct mbox_view *v, uint32_t uidnext)
{
	v->uidnext = uidnext;
}

void mbox_view_set_highestmodseq(struct mbox_view *v, uint64_t highestmodseq)
{
	v->highestmodseq = highestmodseq;
	if (highestmodseq != 0)
		v->nomodseq = false;
}

void mbox_view_set_nomodseq(struct mbox_view *v)
{
	v->highestmodseq = 0;
	v->nomodseq = true;
}

uint32_t mbox_view_uidvalidity(const struct mbox_view *v)
{
	return v->uidvalidity;
}

uint32_t mbox_view_uidnext(const struct mbox_view *v)
{
	return v->uidnext;
}

uint64_t mbox_view_highestmodseq(const struct mbox_view *v)
{
	return v->highestmodseq;
}

bool mbox_view_nomodseq(const struct mbox_view *v)
{
	return v->nomodseq;
}

uint32_t mbox_view_count(const struct mbox_view *v)
{
	return v->count;
}

bool mbox_view_uids_known(const struct mbox_view *v)
{
	return v->unknown == 0;
}

void mbox_view_set_flags_inexact(struct mbox_view *v)
{
	v->inexact = true;
}

bool mbox_view_flags_exact(const struct mbox_view *v)
{
	return !v->inexact;
}

uint32_t mbox_view_runs(const struct mbox_view *v)
{
	return v->nruns;
}

size_t mbox_view_mem(const struct mbox_view *v)
{
	size_t m = sizeof(*v) + (size_t)v->cap * sizeof(*v->runs) + v->name_len;

	if (v->kw != NULL) {
		m += MBOX_KW_MAX * sizeof(*v->kw);
		for (unsigned i = 0; i < v->nkw; i++)
			m += v->kw[i].len;
	}
	return m;
}

/* ---- runs ---- */

static uint64_t run_last_uid(const struct mbox_run *r)
{
	return (uint64_t)r->uid + r->n - 1;
}

/* The run holding message seq (1..count): the last one starting at or
 * before it. */
static uint32_t find_run(const struct mbox_view *v, uint32_t seq)
{
	uint32_t lo = 0, hi = v->nruns;

	while (hi - lo > 1) {
		uint32_t mid = lo + (hi - lo) / 2;

		if (v->runs[mid].seq <= seq)
			lo = mid;
		else
			hi = mid;
	}
	return lo;
}

/* Room for extra more runs. Returns 0, or -1 (v unchanged) past
 * MBOX_VIEW_MAX_RUNS or on no memory. */
static int reserve(struct mbox_view *v, uint32_t extra)
{
	uint32_t need, cap;
	struct mbox_run *r;

	if (extra > MBOX_VIEW_MAX_RUNS - v->nruns)
		return -1;
	need = v->nruns + extra;
	if (need <= v->cap)
		return 0;
	/* Double, so growing one run at a time costs amortised O(1). */
	cap = v->cap < 8 ? 8 : v->cap;
	while (cap < need)
		cap = cap > MBOX_VIEW_MAX_RUNS / 2 ? MBOX_VIEW_MAX_RUNS : cap * 2;
	r = zrealloc(v->runs, (size_t)v->cap * sizeof(*r), (size_t)cap * sizeof(*r));
	if (r == NULL)
		return -1;
	v->runs = r;
	v->cap = cap;
	return 0;
}

/* Give back most of the room a big VANISHED freed; failing is harmless. */
static void maybe_shrink(struct mbox_view *v)
{
	uint32_t cap = v->nruns * 2 < 8 ? 8 : v->nruns * 2;
	struct mbox_run *r;

	if (v->cap <= 64 || v->nruns >= v->cap / 4)
		return;
	r = zrealloc(v->runs, (size_t)v->cap * sizeof(*r), (size_t)cap * sizeof(*r));
	if (r != NULL) {
		v->runs = r;
		v->cap = cap;
	}
}

/* Could a and b (a just before b) be one run? */
static bool mergeable(const struct mbox_run *a, const struct mbox_run *b)
{
	if (a->fl != b->fl || a->modseq != b->modseq)
		return false;
	if (a->uid == 0 || b->uid == 0)
		return a->uid == b->uid;
	return (uint64_t)a->uid + a->n == b->uid;
}

static void remove_run(struct mbox_view *v, uint32_t i)
{
	memmove(&v->runs[i], &v->runs[i + 1], (size_t)(v->nruns - i - 1) * sizeof(*v->runs));
	v->nruns--;
}

/* Open k slots at index at (room reserved by the caller). */
static void insert_runs(struct mbox_view *v, uint32_t at, uint32_t k)
{
	memmove(&v->runs[at + k], &v->runs[at], (size_t)(v->nruns - at) * sizeof(*v->runs));
	v->nruns += k;
}

/* Merge runs[i] into runs[i - 1] when they could be one. */
static void join_at(struct mbox_view *v, uint32_t i)
{
	if (i > 0 && i < v->nruns && mergeable(&v->runs[i - 1], &v->runs[i])) {
		v->runs[i - 1].n += v->runs[i].n;
		remove_run(v, i);
	}
}

/* Merge every pair of neighbours that could be one (sequence numbers do
 * not move: merged runs are adjacent). */
static void merge_all(struct mbox_view *v)
{
	uint32_t o = 0;

	for (uint32_t i = 0; i < v->nruns; i++) {
		if (o > 0 && mergeable(&v->runs[o - 1], &v->runs[i]))
			v->runs[o - 1].n += v->runs[i].n;
		else
			v->runs[o++] = v->runs[i];
	}
	v->nruns = o;
}

static void recompute_last_known(struct mbox_view *v)
{
	v->last_known = 0;
	for (uint32_t i = v->nruns; i-- > 0;) {
		if (v->runs[i].uid != 0) {
			v->last_known = v->runs[i].seq + v->runs[i].n - 1;
			return;
		}
	}
}

/*
 * Message seq becomes (uid, fl, modseq): its run splits into up to three
 * (before, the message, after), and the message joins a neighbour when it
 * can. The caller has reserved two runs.
 */
static void set_msg(struct mbox_view *v, uint32_t seq, uint32_t uid, uint32_t fl, uint64_t modseq)
{
	uint32_t r = find_run(v, seq);
	struct mbox_run run = v->runs[r], piece[3];
	uint32_t k = seq - run.seq, np = 0, m;

	if (k > 0) {
		piece[np] = run;
		piece[np++].n = k;
	}
	m = r + np;
	piece[np++] = (struct mbox_run){.modseq = modseq, .seq = seq, .n = 1, .uid = uid, .fl = fl};
	if (k + 1 < run.n) {
		piece[np] = run;
		piece[np].seq = seq + 1;
		piece[np].n = run.n - k - 1;
		piece[np].uid = run.uid == 0 ? 0 : run.uid + k + 1;
		np++;
	}
	insert_runs(v, r + 1, np - 1);
	memcpy(&v->runs[r], piece, np * sizeof(piece[0]));
	if (m + 1 < v->nruns && mergeable(&v->runs[m], &v->runs[m + 1])) {
		v->runs[m].n += v->runs[m + 1].n;
		remove_run(v, m + 1);
	}
	join_at(v, m);
}

/*
 * The UIDs message seq (in unknown run r) may take: above the last known
 * one before it by at least the distance in sequence numbers, below the
 * next known one likewise, so that the unknown messages between keep room
 * for theirs; and room for all the messages before and after it within
 * 1..UINT32_MAX. lo > hi when there is none (an EXISTS may have added more
 * messages than UIDs are left).
 */
static void uid_bounds(const struct mbox_view *v, uint32_t r, uint32_t seq, uint64_t *lo_r,
                       uint64_t *hi_r)
{
	uint64_t lo = seq, hi = (uint64_t)UINT32_MAX - (v->count - seq);

	for (uint32_t j = r; j-- > 0;) {
		const struct mbox_run *p = &v->runs[j];

		if (p->uid != 0) {
			uint64_t b = run_last_uid(p) + (seq - (p->seq + p->n - 1));

			lo = b > lo ? b : lo;
			break;
		}
	}
	if (seq < v->last_known) {
		for (uint32_t j = r + 1; j < v->nruns; j++) {
			const struct mbox_run *p = &v->runs[j];

			if (p->uid != 0) {
				uint64_t b = (uint64_t)p->uid - (p->seq - seq);

				hi = b < hi ? b : hi;
				break;
			}
		}
	}
	*lo_r = lo;
	*hi_r = hi;
}

/* ---- feeding ---- */

int mbox_view_exists(struct mbox_view *v, uint32_t n)
{
	struct mbox_run *last = v->nruns > 0 ? &v->runs[v->nruns - 1] : NULL;
	uint32_t add;

	if (n < v->count || n > MBOX_VIEW_MAX)
		return -1;
	if (n == v->count)
		return 0;
	add = n - v->count;
	if (last != NULL && last->uid == 0 && last->fl == 0 && last->modseq == 0) {
		last->n += add;
	} else {
		if (reserve(v, 1) < 0)
			return -1;
		v->runs[v->nruns++] = (struct mbox_run){
		    .modseq = 0, .seq = v->count + 1, .n = add, .uid = 0, .fl = 0};
	}
	v->count = n;
	v->unknown += add;
	return 0;
}

int mbox_view_expunge(struct mbox_view *v, uint32_t seq)
{
	uint32_t r, k, next;
	struct mbox_run *run;
	bool known;

	if (seq < 1 || seq > v->count)
		return -1;
	r = find_run(v, seq);
	run = &v->runs[r];
	k = seq - run->seq;
	known = run->uid != 0;
	if (known && k > 0 && k + 1 < run->n) {
		/* From inside a run of UIDs: two runs with a gap between. */
		uint32_t n = run->n, uid = run->uid;

		if (reserve(v, 1) < 0)
			return -1;
		insert_runs(v, r + 1, 1);
		v->runs[r + 1] = v->runs[r];
		v->runs[r].n = k;
		v->runs[r + 1].seq = seq;
		v->runs[r + 1].n = n - k - 1;
		v->runs[r + 1].uid = uid + k + 1;
		next = r + 2;
	} else if (run->n == 1) {
		remove_run(v, r);
		/* Its neighbours may now be one run (two unknown ones). */
		join_at(v, r);
		next = r;
	} else {
		if (known && k == 0)
			run->uid++;
		run->n--;
		next = r + 1;
	}
	for (uint32_t i = next; i < v->nruns; i++)
		v->runs[i].seq--;
	v->count--;
	if (!known)
		v->unknown--;
	if (known && seq == v->last_known)
		recompute_last_known(v);
	else if (seq < v->last_known)
		v->last_known--;
	return 0;
}

int mbox_view_vanished(struct mbox_view *v, uint32_t uid_lo, uint32_t uid_hi)
{
	uint64_t prev_last = 0; /* last known UID so far, 0: none */
	uint32_t i, j, o, removed = 0, next_seq;

	if (uid_lo == 0 || uid_lo > uid_hi)
		return -1;
	/* Check pass: a group of unknown runs may hold any UID strictly
	 * between its known neighbours; if that meets the range, whether they
	 * went cannot be told. */
	for (i = 0; i < v->nruns && prev_last < uid_hi;) {
		uint64_t hi = UINT32_MAX;

		if (v->runs[i].uid != 0) {
			prev_last = run_last_uid(&v->runs[i]);
			i++;
			continue;
		}
		for (j = i; j < v->nruns && v->runs[j].uid == 0; j++)
			;
		if (j < v->nruns)
			hi = (uint64_t)v->runs[j].uid - 1;
		if (prev_last + 1 <= uid_hi && hi >= uid_lo)
			return -1;
		i = j;
	}
	/* The first known run reaching the range. */
	for (i = 0; i < v->nruns; i++) {
		if (v->runs[i].uid != 0 && run_last_uid(&v->runs[i]) >= uid_lo)
			break;
	}
	if (i == v->nruns || v->runs[i].uid > uid_hi)
		return 0;
	if (v->runs[i].uid < uid_lo && run_last_uid(&v->runs[i]) > uid_hi) {
		/* Strictly inside one run, the only one it meets: split it. */
		uint32_t last = (uint32_t)run_last_uid(&v->runs[i]);

		if (reserve(v, 1) < 0)
			return -1;
		removed = uid_hi - uid_lo + 1;
		insert_runs(v, i + 1, 1);
		v->runs[i + 1] = v->runs[i];
		v->runs[i].n = uid_lo - v->runs[i].uid;
		v->runs[i + 1].uid = uid_hi + 1;
		v->runs[i + 1].n = last - uid_hi;
		v->runs[i + 1].seq = v->runs[i].seq + v->runs[i].n;
		for (j = i + 2; j < v->nruns; j++)
			v->runs[j].seq -= removed;
		v->count -= removed;
		/* The last known message is at or after the second half. */
		v->last_known -= removed;
		return 0;
	}
	/* Otherwise runs lose a prefix, a suffix or everything: rewrite them
	 * in place (never more than there were), renumbering and joining
	 * neighbours that the removal brought together. */
	o = i;
	next_seq = v->runs[i].seq;
	for (j = i; j < v->nruns; j++) {
		struct mbox_run cur = v->runs[j];

		if (cur.uid != 0 && cur.uid <= uid_hi && run_last_uid(&cur) >= uid_lo) {
			uint64_t last = run_last_uid(&cur);

			if (cur.uid >= uid_lo && last <= uid_hi) {
				removed += cur.n;
				continue;
			}
			if (cur.uid < uid_lo) {
				removed += (uint32_t)(last - uid_lo + 1);
				cur.n = uid_lo - cur.uid;
			} else {
				removed += uid_hi - cur.uid + 1;
				cur.n = (uint32_t)(last - uid_hi);
				cur.uid = uid_hi + 1;
			}
		}
		cur.seq = next_seq;
		next_seq += cur.n;
		if (o > 0 && mergeable(&v->runs[o - 1], &cur))
			v->runs[o - 1].n += cur.n;
		else
			v->runs[o++] = cur;
	}
	v->nruns = o;
	v->count -= removed;
	recompute_last_known(v);
	maybe_shrink(v);
	return 0;
}

int mbox_view_vanished_earlier(const struct mbox_view *v, uint32_t uid_lo, uint32_t uid_hi)
{
	if (uid_lo == 0 || uid_lo > uid_hi)
		return -1;
	for (uint32_t i = 0; i < v->nruns; i++) {
		const struct mbox_run *r = &v->runs[i];

		if (r->uid == 0)
			continue;
		if (r->uid > uid_hi)
			break;
		if (run_last_uid(r) >= uid_lo)
			return -1;
	}
	return 0;
}

int mbox_view_fetch_msg(struct mbox_view *v, uint32_t seq, const struct mbox_fetch *f)
{
	const struct mbox_run *run;
	uint32_t cur_uid, uid, fl;
	uint64_t modseq;

	if (seq < 1 || seq > v->count)
		return -1;
	if (f->has_flags && (uint64_t)f->keywords >> v->nkw != 0)
		return -1;
	run = &v->runs[find_run(v, seq)];
	cur_uid = run->uid == 0 ? 0 : run->uid + (seq - run->seq);
	uid = cur_uid;
	if (f->uid != 0 && f->uid != cur_uid) {
		uint64_t lo, hi;

		if (cur_uid != 0)
			return -1; /* a message's UID never changes */
		uid_bounds(v, (uint32_t)(run - v->runs), seq, &lo, &hi);
		if (f->uid < lo || f->uid > hi)
			return -1;
		uid = f->uid;
	}
	fl = run->fl;
	modseq = run->modseq;
	if (f->has_flags) {
		uint32_t nfl = (f->flags & MBOX_F_ALL) | f->keywords << KW_SHIFT;

		/* New flags without a MODSEQ: the old one no longer holds. */
		if (nfl != fl)
			modseq = 0;
		fl = nfl;
	}
	if (f->modseq != 0)
		modseq = f->modseq > v->floor ? f->modseq : 0;
	if (uid != cur_uid || fl != run->fl || modseq != run->modseq) {
		if (reserve(v, 2) < 0)
			return -1;
		set_msg(v, seq, uid, fl, modseq);
	}
	if (uid != cur_uid) {
		v->unknown--;
		if (seq > v->last_known)
			v->last_known = seq;
		if (v->uidnext != 0 && uid >= v->uidnext && uid < UINT32_MAX)
			v->uidnext = uid + 1;
	}
	/* A NOMODSEQ mailbox has no HIGHESTMODSEQ, whatever a FETCH says. */
	if (f->modseq > v->highestmodseq && !v->nomodseq)
		v->highestmodseq = f->modseq;
	return 0;
}

int mbox_view_fetch(struct mbox_view *v, uint32_t seq, uint32_t uid, bool has_flags, unsigned flags)
{
	struct mbox_fetch f = {.uid = uid, .has_flags = has_flags, .flags = flags};

	return mbox_view_fetch_msg(v, seq, &f);
}

void mbox_view_set_modseq_floor(struct mbox_view *v, uint64_t floor)
{
	bool changed = false;

	v->floor = floor;
	for (uint32_t i = 0; i < v->nruns; i++) {
		if (v->runs[i].modseq != 0 && v->runs[i].modseq <= floor) {
			v->runs[i].modseq = 0;
			changed = true;
		}
	}
	if (changed)
		merge_all(v);
}

uint64_t mbox_view_modseq_floor(const struct mbox_view *v)
{
	return v->floor;
}

uint32_t mbox_view_uid(const struct mbox_view *v, uint32_t seq)
{
	const struct mbox_run *r;

	if (seq < 1 || seq > v->count)
		return 0;
	r = &v->runs[find_run(v, seq)];
	return r->uid == 0 ? 0 : r->uid + (seq - r->seq);
}

unsigned mbox_view_flags(const struct mbox_view *v, uint32_t seq)
{
	if (seq < 1 || seq > v->count)
		return 0;
	return v->runs[find_run(v, seq)].fl & MBOX_F_ALL;
}

uint32_t mbox_view_keywords(const struct mbox_view *v, uint32_t seq)
{
	if (seq < 1 || seq > v->count)
		return 0;
	return v->runs[find_run(v, seq)].fl >> KW_SHIFT;
}

uint64_t mbox_view_modseq(const struct mbox_view *v, uint32_t seq)
{
	if (seq < 1 || seq > v->count)
		return 0;
	return v->runs[find_run(v, seq)].modseq;
}

/* ---- keywords ---- */

/* A flag name the diff can write back inside a FLAGS list: an atom, with
 * a leading backslash allowed (other flags like \Junk some servers use). */
static bool kw_byte_ok(uint8_t c)
{
	return c > 0x20 && c < 0x7f && c != '(' && c != ')' && c != '{' && c != '"' && c != ']';
}

int mbox_view_keyword(struct mbox_view *v, const char *name, size_t len, unsigned *bit_r)
{
	char *p;

	for (unsigned i = 0; i < v->nkw; i++) {
		if (v->kw[i].len == len && memcmp(v->kw[i].name, name, len) == 0) {
			*bit_r = i;
			return 0;
		}
	}
	if (len == 0 || len > MBOX_KW_NAME_MAX || v->nkw == MBOX_KW_MAX)
		return -1;
	for (size_t i = 0; i < len; i++) {
		if (!kw_byte_ok((uint8_t)name[i]))
			return -1;
	}
	if (v->kw == NULL) {
		v->kw = zalloc(MBOX_KW_MAX * sizeof(*v->kw));
		if (v->kw == NULL)
			return -1;
	}
	p = zalloc(len);
	if (p == NULL)
		return -1;
	memcpy(p, name, len);
	v->kw[v->nkw].name = p;
	v->kw[v->nkw].len = len;
	*bit_r = v->nkw++;
	return 0;
}

const char *mbox_view_keyword_name(const struct mbox_view *v, unsigned bit, size_t *len_r)
{
	if (bit >= v->nkw) {
		*len_r = 0;
		return NULL;
	}
	*len_r = v->kw[bit].len;
	return v->kw[bit].name;
}

unsigned mbox_view_keyword_count(const struct mbox_view *v)
{
	return v->nkw;
}

/* ---- the invariant checker ---- */

int mbox_view_check(const struct mbox_view *v, const char **why_r)
{
	uint64_t sum = 0, unknown = 0, last_known = 0;
	const struct mbox_run *prev_known = NULL;

#define CHECK(cond, why)                                                                           \
	do {                                                                                       \
		if (!(cond)) {                                                                     \
			*why_r = (why);                                                            \
			return -1;                                                                 \
		}                                                                                  \
	} while (0)
	*why_r = NULL;
	CHECK(v->nruns <= v->cap && v->cap <= MBOX_VIEW_MAX_RUNS, "run count above capacity");
	CHECK((v->runs == NULL) == (v->cap == 0), "runs pointer and capacity disagree");
	CHECK(v->count <= MBOX_VIEW_MAX, "count above MBOX_VIEW_MAX");
	CHECK((v->name == NULL) == (v->name_len == 0) && v->name_len <= MBOX_NAME_MAX,
	      "name and its length disagree");
	CHECK(v->nkw <= MBOX_KW_MAX && (v->nkw == 0 || v->kw != NULL), "keyword table");
	CHECK(!v->nomodseq || v->highestmodseq == 0, "NOMODSEQ with a HIGHESTMODSEQ");
	for (unsigned i = 0; i < v->nkw; i++) {
		CHECK(v->kw[i].len > 0 && v->kw[i].len <= MBOX_KW_NAME_MAX, "keyword length");
		for (unsigned j = 0; j < i; j++) {
			CHECK(v->kw[j].len != v->kw[i].len ||
			          memcmp(v->kw[j].name, v->kw[i].name, v->kw[i].len) != 0,
			      "keyword twice in the table");
		}
	}
	for (uint32_t i = 0; i < v->nruns; i++) {
		const struct mbox_run *r = &v->runs[i];

		CHECK(r->n >= 1, "empty run");
		CHECK(r->seq == sum + 1, "run does not start where the previous ends");
		CHECK((r->fl & ~(MBOX_F_ALL | (((1u << v->nkw) - 1) << KW_SHIFT))) == 0,
		      "flag bit outside the system flags and the keyword table");
		CHECK(r->modseq == 0 || r->modseq > v->floor, "MODSEQ kept at or below the floor");
		CHECK(i == 0 || !mergeable(&v->runs[i - 1], r), "two runs that should be one");
		if (r->uid == 0) {
			unknown += r->n;
		} else {
			CHECK(run_last_uid(r) <= UINT32_MAX, "UIDs of a run wrap");
			if (prev_known != NULL) {
				uint64_t pl = run_last_uid(prev_known);
				uint64_t ps = prev_known->seq + prev_known->n - 1;

				CHECK(r->uid > pl && r->uid - pl >= r->seq - ps,
				      "known UIDs do not ascend with room between");
			}
			prev_known = r;
			last_known = (uint64_t)r->seq + r->n - 1;
		}
		sum += r->n;
	}
	CHECK(sum == v->count, "runs do not add up to the count");
	CHECK(unknown == v->unknown, "unknown-UID count is off");
	CHECK(last_known == v->last_known, "last known sequence number is off");
#undef CHECK
	return 0;
}

/* ---- the diff ---- */

/* A growable NUL-terminated string; err sticks after a failed append. */
struct mbox_out {
	char *data;
	size_t len;
	size_t cap;
	bool err;
};

static void mbox_out_printf(struct mbox_out *o, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void mbox_out_printf(struct mbox_out *o, const char *fmt, ...)
{
	va_list ap;
	int n;

	if (o->err)
		return;
	for (;;) {
		size_t room = o->cap - o->len;

		va_start(ap, fmt);
		n = vsnprintf(o->data == NULL ? NULL : o->data + o->len, room, fmt, ap);
		va_end(ap);
		if (n < 0) {
			o->err = true;
			return;
		}
		if ((size_t)n < room) {
			o->len += (size_t)n;
			return;
		}
		{
			size_t cap = o->cap < 256 ? 256 : o->cap;
			char *d;

			while (cap - o->len <= (size_t)n) {
				if (cap > SIZE_MAX / 2) {
					o->err = true;
					return;
				}
				cap *= 2;
			}
			d = realloc(o->data, cap);
			if (d == NULL) {
				o->err = true;
				return;
			}
			o->data = d;
			o->cap = cap;
		}
	}
}

/* "FLAGS (...)": system flags in MBOX_F_* order, then v's keywords. */
static void mbox_out_flags(struct mbox_out *o, const struct mbox_view *v, uint32_t fl)
{
	static const struct {
		unsigned bit;
		const char *name;
	} names[] = {
	    {MBOX_F_SEEN, "\\Seen"},       {MBOX_F_ANSWERED, "\\Answered"},
	    {MBOX_F_FLAGGED, "\\Flagged"}, {MBOX_F_DELETED, "\\Deleted"},
	    {MBOX_F_DRAFT, "\\Draft"},
	};
	const char *sep = "";

	mbox_out_printf(o, "FLAGS (");
	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
		if (fl & names[i].bit) {
			mbox_out_printf(o, "%s%s", sep, names[i].name);
			sep = " ";
		}
	}
	for (unsigned b = 0; b < v->nkw; b++) {
		if (fl >> KW_SHIFT & 1u << b) {
			mbox_out_printf(o, "%s%.*s", sep, (int)v->kw[b].len, v->kw[b].name);
			sep = " ";
		}
	}
	mbox_out_printf(o, ")");
}

/* A place in a view whose UIDs are all known: message runs[r].seq + k. */
struct mbox_cur {
	const struct mbox_view *v;
	uint32_t r;
	uint32_t k;
};

static bool cur_end(const struct mbox_cur *c)
{
	return c->r >= c->v->nruns;
}

static const struct mbox_run *cur_run(const struct mbox_cur *c)
{
	return &c->v->runs[c->r];
}

static uint32_t cur_uid(const struct mbox_cur *c)
{
	return cur_run(c)->uid + c->k;
}

static uint32_t cur_seq(const struct mbox_cur *c)
{
	return cur_run(c)->seq + c->k;
}

static uint32_t cur_len(const struct mbox_cur *c)
{
	return cur_run(c)->n - c->k;
}

static void cur_skip(struct mbox_cur *c, uint32_t n)
{
	c->k += n;
	if (c->k == cur_run(c)->n) {
		c->r++;
		c->k = 0;
	}
}

/*
 * One step of the walk by UID: the next segment that is only in a's view
 * (*where_r -1), only in b's (+1) or in both (0), and its length; the
 * caller skips it. Both cursors must not be at the end.
 */
static uint32_t cur_step(const struct mbox_cur *a, const struct mbox_cur *b, int *where_r)
{
	uint64_t ua, ub;

	if (cur_end(b)) {
		*where_r = -1;
		return cur_len(a);
	}
	if (cur_end(a)) {
		*where_r = 1;
		return cur_len(b);
	}
	ua = cur_uid(a);
	ub = cur_uid(b);
	if (ua < ub) {
		*where_r = -1;
		return ua + cur_len(a) > ub ? (uint32_t)(ub - ua) : cur_len(a);
	}
	if (ub < ua) {
		*where_r = 1;
		return ub + cur_len(b) > ua ? (uint32_t)(ua - ub) : cur_len(b);
	}
	*where_r = 0;
	return cur_len(a) < cur_len(b) ? cur_len(a) : cur_len(b);
}

/* Messages of old that now lacks, consecutive in old's numbering and UIDs. */
struct mbox_gone {
	uint32_t seq;
	uint32_t uid;
	uint32_t n;
};

/* Are flags word of (now) the same flags as ofl (old), keywords matched by
 * name through kmap (now's bit -> old's bit, -1 when old has no such)? */
static bool same_flags(uint32_t ofl, uint32_t nfl, const int *kmap)
{
	uint32_t tr = nfl & MBOX_F_ALL, kw = nfl >> KW_SHIFT;

	for (unsigned b = 0; kw != 0; b++, kw >>= 1) {
		if ((kw & 1) == 0)
			continue;
		if (kmap[b] < 0)
			return false;
		tr |= 1u << (KW_SHIFT + (unsigned)kmap[b]);
	}
	return tr == ofl;
}

int mbox_view_diff_enabled(const struct mbox_view *old, const struct mbox_view *now,
                           unsigned enabled, char **out_r, size_t *len_r)
{
	struct mbox_out o = {NULL, 0, 0, false};
	struct mbox_gone *gone = NULL;
	size_t ngone = 0, gcap = 0;
	uint32_t ngone_msgs = 0, old_max;
	uint64_t max_modseq = 0;
	bool qresync = (enabled & MBOX_EN_QRESYNC) != 0;
	bool with_modseq = (enabled & MBOX_EN_CONDSTORE) != 0 && !now->nomodseq;
	struct mbox_cur co = {old, 0, 0}, cn = {now, 0, 0};
	int kmap[MBOX_KW_MAX];
	int where;

	*out_r = NULL;
	*len_r = 0;
	if (old->uidvalidity == 0 || old->uidvalidity != now->uidvalidity)
		return -1;
	if (old->unknown != 0 || now->unknown != 0 || old->inexact || now->inexact)
		return -1;
	if ((enabled & MBOX_EN_CONDSTORE) != 0 && old->nomodseq != now->nomodseq)
		return -1;
	for (unsigned b = 0; b < now->nkw; b++) {
		kmap[b] = -1;
		for (unsigned a = 0; a < old->nkw; a++) {
			if (old->kw[a].len == now->kw[b].len &&
			    memcmp(old->kw[a].name, now->kw[b].name, now->kw[b].len) == 0) {
				kmap[b] = (int)a;
				break;
			}
		}
	}

	/* Pass 1: what went, and whether the views belong together. */
	old_max = old->nruns > 0 ? (uint32_t)run_last_uid(&old->runs[old->nruns - 1]) : 0;
	while (!cur_end(&co) || !cur_end(&cn)) {
		uint32_t n = cur_step(&co, &cn, &where);

		if (where < 0) {
			struct mbox_gone *g = ngone > 0 ? &gone[ngone - 1] : NULL;

			if (g != NULL && g->seq + g->n == cur_seq(&co) &&
			    (uint64_t)g->uid + g->n == cur_uid(&co)) {
				g->n += n;
			} else {
				if (ngone == gcap) {
					size_t cap = gcap < 16 ? 16 : gcap * 2;
					struct mbox_gone *p = realloc(gone, cap * sizeof(*p));

					if (p == NULL)
						goto fail;
					gone = p;
					gcap = cap;
				}
				gone[ngone++] = (struct mbox_gone){
				    .seq = cur_seq(&co), .uid = cur_uid(&co), .n = n};
			}
			ngone_msgs += n;
			cur_skip(&co, n);
		} else if (where > 0) {
			/* New in now: only above everything old knew. */
			if (cur_uid(&cn) <= old_max)
				goto fail;
			cur_skip(&cn, n);
		} else {
			cur_skip(&co, n);
			cur_skip(&cn, n);
		}
	}

	/* Start with room for "", so an empty diff is a string too. */
	mbox_out_printf(&o, "%s", "");
	if (ngone > 0 && !qresync) {
		/* Backwards: the highest sequence number first. */
		for (size_t g = ngone; g-- > 0;) {
			for (uint32_t s = gone[g].seq + gone[g].n; s-- > gone[g].seq;)
				mbox_out_printf(&o, "* %" PRIu32 " EXPUNGE\r\n", s);
		}
	} else if (ngone > 0) {
		/* Ascending UIDs, runs as lo:hi, joined on consecutive UIDs
		 * (UIDs between them never existed for this client, so naming
		 * them would be harmless but also unneeded: keep the set exact). */
		const char *sep = "";
		uint32_t lo = gone[0].uid, hi = gone[0].uid + gone[0].n - 1;

		mbox_out_printf(&o, "* VANISHED ");
		for (size_t g = 1; g <= ngone; g++) {
			if (g < ngone && (uint64_t)hi + 1 == gone[g].uid) {
				hi = gone[g].uid + gone[g].n - 1;
				continue;
			}
			if (lo == hi)
				mbox_out_printf(&o, "%s%" PRIu32, sep, lo);
			else
				mbox_out_printf(&o, "%s%" PRIu32 ":%" PRIu32, sep, lo, hi);
			sep = ",";
			if (g < ngone) {
				lo = gone[g].uid;
				hi = gone[g].uid + gone[g].n - 1;
			}
		}
		mbox_out_printf(&o, "\r\n");
	}

	if (old->count - ngone_msgs != now->count)
		mbox_out_printf(&o, "* %" PRIu32 " EXISTS\r\n", now->count);

	/* Pass 2: flag changes of the messages in both, in now's numbering. */
	co = (struct mbox_cur){old, 0, 0};
	cn = (struct mbox_cur){now, 0, 0};
	while (!cur_end(&co) && !cur_end(&cn)) {
		uint32_t n = cur_step(&co, &cn, &where);
		const struct mbox_run *ro = cur_run(&co), *rn = cur_run(&cn);
		bool bump;

		if (where < 0) {
			cur_skip(&co, n);
			continue;
		}
		if (where > 0) {
			cur_skip(&cn, n);
			continue;
		}
		/* Changed after what the client knew, flags or not. */
		bump = with_modseq && rn->modseq > ro->modseq && rn->modseq > old->highestmodseq;
		if (bump || !same_flags(ro->fl, rn->fl, kmap)) {
			if (with_modseq && rn->modseq == 0)
				goto fail;
			for (uint32_t i = 0; i < n; i++) {
				mbox_out_printf(&o, "* %" PRIu32 " FETCH (", cur_seq(&cn) + i);
				if (qresync)
					mbox_out_printf(&o, "UID %" PRIu32 " ", cur_uid(&cn) + i);
				if (with_modseq)
					mbox_out_printf(&o, "MODSEQ (%" PRIu64 ") ", rn->modseq);
				mbox_out_flags(&o, now, rn->fl);
				mbox_out_printf(&o, ")\r\n");
			}
			if (rn->modseq > max_modseq)
				max_modseq = rn->modseq;
		}
		cur_skip(&co, n);
		cur_skip(&cn, n);
	}

	if (with_modseq && now->highestmodseq > old->highestmodseq &&
	    now->highestmodseq > max_modseq)
		mbox_out_printf(&o, "* OK [HIGHESTMODSEQ %" PRIu64 "] Highest\r\n",
		                now->highestmodseq);

	if (o.err)
		goto fail;
	free(gone);
	*out_r = o.data;
	*len_r = o.len;
	return 0;
fail:
	free(gone);
	free(o.data);
	return -1;
}

int mbox_view_diff(const struct mbox_view *old, const struct mbox_view *now, bool qresync,
                   char **out_r, size_t *len_r)
{
	return mbox_view_diff_enabled(old, now, qresync ? MBOX_EN_QRESYNC : 0, out_r, len_r);
}
