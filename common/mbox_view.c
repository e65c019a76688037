/*
 * mbox_view — see mbox_view.h. The messages are one array in sequence
 * order:
 *
 *   msgs: [ {uid 3, S} {uid 5, -} {uid 7, F} {uid 0, -} {uid 0, -} ] count 5
 *           seq 1       seq 2      seq 3      from the last EXISTS,
 *                                             UIDs not fetched yet
 *
 * Invariants:
 *   - count <= cap <= MBOX_VIEW_MAX; msgs is NULL when cap is 0.
 *   - Known UIDs (non-zero) are strictly ascending by index; flags hold
 *     only MBOX_F_ALL bits.
 *   - Every mutator checks first and changes afterwards, so a refused
 *     (-1) call leaves the view as it was.
 *   - uidnext is 0 or above every UID a FETCH named.
 *   - known_end is one past the index of the last known UID (0: none), so
 *     msgs[known_end..count) are all unknown: a FETCH 1:* filling in the
 *     UIDs after a big EXISTS finds its upper neighbour in O(1), not by
 *     scanning the unknown tail (servers answer in ascending order; the
 *     lower neighbour is then the message just before).
 *
 * The diff walks old and now together by UID (both ascending), so it is
 * linear in the two counts and its output is bounded by them.
 */
#include "mbox_view.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct mbox_msg {
	uint32_t uid; /* 0 = unknown */
	uint32_t flags;
};

struct mbox_view {
	uint32_t uidvalidity;
	uint32_t uidnext;
	uint64_t highestmodseq;
	struct mbox_msg *msgs;
	uint32_t count;
	uint32_t cap;
	uint32_t known_end;
};

int mbox_view_init(struct mbox_view **v_r)
{
	struct mbox_view *v = calloc(1, sizeof(*v));

	*v_r = v;
	return v == NULL ? -1 : 0;
}

void mbox_view_reset(struct mbox_view *v)
{
	free(v->msgs);
	memset(v, 0, sizeof(*v));
}

void mbox_view_destroy(struct mbox_view **vp)
{
	if (vp == NULL || *vp == NULL)
		return;
	free((*vp)->msgs);
	free(*vp);
	*vp = NULL;
}

int mbox_view_clone(const struct mbox_view *src, struct mbox_view **v_r)
{
	struct mbox_view *v = calloc(1, sizeof(*v));

	*v_r = NULL;
	if (v == NULL)
		return -1;
	*v = *src;
	v->msgs = NULL;
	v->cap = src->count;
	if (src->count > 0) {
		v->msgs = malloc((size_t)src->count * sizeof(*v->msgs));
		if (v->msgs == NULL) {
			free(v);
			return -1;
		}
		memcpy(v->msgs, src->msgs, (size_t)src->count * sizeof(*v->msgs));
	}
	*v_r = v;
	return 0;
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

uint32_t mbox_view_count(const struct mbox_view *v)
{
	return v->count;
}

uint32_t mbox_view_uid(const struct mbox_view *v, uint32_t seq)
{
	return (seq >= 1 && seq <= v->count) ? v->msgs[seq - 1].uid : 0;
}

unsigned mbox_view_flags(const struct mbox_view *v, uint32_t seq)
{
	return (seq >= 1 && seq <= v->count) ? v->msgs[seq - 1].flags : 0;
}

bool mbox_view_uids_known(const struct mbox_view *v)
{
	for (uint32_t i = 0; i < v->count; i++) {
		if (v->msgs[i].uid == 0)
			return false;
	}
	return true;
}

int mbox_view_exists(struct mbox_view *v, uint32_t n)
{
	if (n < v->count || n > MBOX_VIEW_MAX)
		return -1;
	if (n > v->cap) {
		/* Double, so a mailbox growing one EXISTS at a time costs
		 * amortised O(1) per message; never beyond the bound. */
		uint32_t cap = v->cap < 16 ? 16 : v->cap;
		struct mbox_msg *m;

		while (cap < n)
			cap = cap > MBOX_VIEW_MAX / 2 ? MBOX_VIEW_MAX : cap * 2;
		m = realloc(v->msgs, (size_t)cap * sizeof(*m));
		if (m == NULL)
			return -1;
		v->msgs = m;
		v->cap = cap;
	}
	for (uint32_t i = v->count; i < n; i++) {
		v->msgs[i].uid = 0;
		v->msgs[i].flags = 0;
	}
	v->count = n;
	return 0;
}

int mbox_view_expunge(struct mbox_view *v, uint32_t seq)
{
	if (seq < 1 || seq > v->count)
		return -1;
	memmove(&v->msgs[seq - 1], &v->msgs[seq], (size_t)(v->count - seq) * sizeof(*v->msgs));
	v->count--;
	if (seq == v->known_end) {
		/* The last known UID went: the next lower one is the end. */
		v->known_end = seq - 1;
		while (v->known_end > 0 && v->msgs[v->known_end - 1].uid == 0)
			v->known_end--;
	} else if (seq < v->known_end) {
		v->known_end--;
	}
	return 0;
}

/* The UIDs message i may have: exactly its own when known, otherwise
 * anything strictly between its nearest known neighbours. */
static void mbox_view_uid_bounds(const struct mbox_view *v, uint32_t i, uint32_t *lo_r,
                                 uint32_t *hi_r)
{
	uint32_t lo = 1, hi = UINT32_MAX;

	if (v->msgs[i].uid != 0) {
		*lo_r = *hi_r = v->msgs[i].uid;
		return;
	}
	for (uint32_t j = i; j-- > 0;) {
		if (v->msgs[j].uid != 0) {
			lo = v->msgs[j].uid + 1;
			break;
		}
	}
	for (uint32_t j = i + 1; j < v->known_end; j++) {
		if (v->msgs[j].uid != 0) {
			hi = v->msgs[j].uid - 1;
			break;
		}
	}
	*lo_r = lo;
	*hi_r = hi;
}

int mbox_view_vanished(struct mbox_view *v, uint32_t uid_lo, uint32_t uid_hi)
{
	uint32_t i, o, k;
	uint32_t lo = 1; /* one above the last known UID so far */

	if (uid_lo == 0 || uid_lo > uid_hi)
		return -1;
	/* Check pass: a run of unknown UIDs msgs[i..k) may hold any UID
	 * strictly between its known neighbours; if that meets the range,
	 * whether they went cannot be told. One sweep, run by run. */
	for (i = 0; i < v->count && lo <= uid_hi; i = k) {
		uint32_t hi = UINT32_MAX;

		if (v->msgs[i].uid != 0) {
			lo = v->msgs[i].uid + 1;
			k = i + 1;
			continue;
		}
		for (k = i; k < v->known_end && v->msgs[k].uid == 0; k++)
			;
		if (k < v->known_end)
			hi = v->msgs[k].uid - 1;
		else
			k = v->count;
		if (lo <= uid_hi && hi >= uid_lo)
			return -1;
	}
	v->known_end = 0;
	for (i = 0, o = 0; i < v->count; i++) {
		uint32_t uid = v->msgs[i].uid;

		if (uid != 0 && uid >= uid_lo && uid <= uid_hi)
			continue;
		v->msgs[o++] = v->msgs[i];
		if (uid != 0)
			v->known_end = o;
	}
	v->count = o;
	return 0;
}

int mbox_view_fetch(struct mbox_view *v, uint32_t seq, uint32_t uid, bool has_flags, unsigned flags)
{
	struct mbox_msg *m;

	if (seq < 1 || seq > v->count)
		return -1;
	m = &v->msgs[seq - 1];
	if (uid != 0 && m->uid != uid) {
		uint32_t lo, hi;

		if (m->uid != 0)
			return -1; /* a message's UID never changes */
		mbox_view_uid_bounds(v, seq - 1, &lo, &hi);
		if (uid < lo || uid > hi)
			return -1;
		m->uid = uid;
		if (seq > v->known_end)
			v->known_end = seq;
		if (v->uidnext != 0 && uid >= v->uidnext && uid < UINT32_MAX)
			v->uidnext = uid + 1;
	}
	if (has_flags)
		m->flags = flags & MBOX_F_ALL;
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

static void mbox_out_flags(struct mbox_out *o, unsigned flags)
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
		if (flags & names[i].bit) {
			mbox_out_printf(o, "%s%s", sep, names[i].name);
			sep = " ";
		}
	}
	mbox_out_printf(o, ")");
}

/*
 * Check that old and now can be diffed (see mbox_view_diff) and count the
 * messages of old that now lacks. Returns 0 or -1.
 */
static int mbox_diff_check(const struct mbox_view *old, const struct mbox_view *now,
                           uint32_t *gone_r)
{
	uint32_t i = 0, j = 0, gone = 0;
	uint32_t old_max;

	if (old->uidvalidity == 0 || old->uidvalidity != now->uidvalidity)
		return -1;
	if (!mbox_view_uids_known(old) || !mbox_view_uids_known(now))
		return -1;
	old_max = old->count > 0 ? old->msgs[old->count - 1].uid : 0;
	while (i < old->count || j < now->count) {
		if (j == now->count || (i < old->count && old->msgs[i].uid < now->msgs[j].uid)) {
			gone++;
			i++;
		} else if (i == old->count || now->msgs[j].uid < old->msgs[i].uid) {
			/* New in now: only above everything old knew. */
			if (now->msgs[j].uid <= old_max)
				return -1;
			j++;
		} else {
			i++;
			j++;
		}
	}
	*gone_r = gone;
	return 0;
}

int mbox_view_diff(const struct mbox_view *old, const struct mbox_view *now, bool qresync,
                   char **out_r, size_t *len_r)
{
	struct mbox_out o = {NULL, 0, 0, false};
	uint32_t gone, i, j;

	*out_r = NULL;
	*len_r = 0;
	if (mbox_diff_check(old, now, &gone) < 0)
		return -1;
	/* Start with room for "", so an empty diff is a string too. */
	mbox_out_printf(&o, "%s", "");

	if (gone > 0 && !qresync) {
		/* Backwards: the highest sequence number first. */
		i = old->count;
		j = now->count;
		while (i > 0) {
			if (j > 0 && now->msgs[j - 1].uid > old->msgs[i - 1].uid) {
				j--;
			} else if (j > 0 && now->msgs[j - 1].uid == old->msgs[i - 1].uid) {
				i--;
				j--;
			} else {
				mbox_out_printf(&o, "* %u EXPUNGE\r\n", (unsigned)i);
				i--;
			}
		}
	} else if (gone > 0) {
		/* Ascending UIDs of old missing from now, runs as lo:hi. Runs
		 * join on consecutive UIDs (UIDs between them never existed
		 * for this client, so naming them is harmless but also
		 * unneeded: keep the set exact). */
		const char *sep = "";
		uint32_t run_lo = 0, run_hi = 0;

		mbox_out_printf(&o, "* VANISHED ");
		for (i = 0, j = 0; i < old->count; i++) {
			uint32_t uid = old->msgs[i].uid;

			while (j < now->count && now->msgs[j].uid < uid)
				j++;
			if (j < now->count && now->msgs[j].uid == uid)
				continue;
			if (run_lo != 0 && uid == run_hi + 1) {
				run_hi = uid;
				continue;
			}
			if (run_lo != 0) {
				if (run_lo == run_hi)
					mbox_out_printf(&o, "%s%u", sep, (unsigned)run_lo);
				else
					mbox_out_printf(&o, "%s%u:%u", sep, (unsigned)run_lo,
					                (unsigned)run_hi);
				sep = ",";
			}
			run_lo = run_hi = uid;
		}
		if (run_lo == run_hi)
			mbox_out_printf(&o, "%s%u\r\n", sep, (unsigned)run_lo);
		else
			mbox_out_printf(&o, "%s%u:%u\r\n", sep, (unsigned)run_lo, (unsigned)run_hi);
	}

	if (old->count - gone != now->count)
		mbox_out_printf(&o, "* %u EXISTS\r\n", (unsigned)now->count);

	for (i = 0, j = 0; j < now->count; j++) {
		uint32_t uid = now->msgs[j].uid;

		while (i < old->count && old->msgs[i].uid < uid)
			i++;
		if (i == old->count || old->msgs[i].uid != uid ||
		    old->msgs[i].flags == now->msgs[j].flags)
			continue;
		if (qresync)
			mbox_out_printf(&o, "* %u FETCH (UID %u ", (unsigned)(j + 1),
			                (unsigned)uid);
		else
			mbox_out_printf(&o, "* %u FETCH (", (unsigned)(j + 1));
		mbox_out_flags(&o, now->msgs[j].flags);
		mbox_out_printf(&o, ")\r\n");
	}

	if (o.err) {
		free(o.data);
		return -1;
	}
	*out_r = o.data;
	*len_r = o.len;
	return 0;
}
