/*
 * park — parked IDLE, the parking half (the diagram is in park.h; waking
 * is wake.c's): deciding to park, settling the backend and handing it
 * over, answering the client while parked, the session's timer then, and
 * the changes that reach parked sessions.
 *
 * Changes come from a watcher (watch.c: session_mbox_changed) or the Redis
 * events channel (`mbox USER MAILBOX`, watch = events): they are hints, a
 * wake always reads the store. A change while the client is not in IDLE
 * only marks the session dirty (an EXPUNGE may not be sent with no command
 * in progress, RFC 3501 7.4.1): the next command wakes it, NOOP and CHECK
 * included.
 *
 * Invariants:
 *   - s->park is set from the decision to park until the wake's lines are
 *     all in client.out; while set, pump_c2b forwards nothing;
 *   - the client's view (s->view) changes only by what the client is
 *     told: the responses the pump forwards, the diff; what the proxy's own
 *     commands return goes to the wake's view (p->now) or is dropped;
 *   - a parked session is in w->parked (by user) from parking to its end,
 *     so that an event can find it in every phase.
 */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mbox_feed.h"
#include "park.h"
#include "route.h"
#include "session.h"
#include "watch.h"
#include "zone.h"

/* ---- small helpers ------------------------------------------------------- */

static uint64_t user_hash(const uint8_t *u, size_t len)
{
	return route_hash(u, len, 0x7061726b);
}

static void park_link(struct session *s)
{
	struct park *p = s->park;

	if (p->linked)
		return;
	hmap_insert(&s->w->parked, &p->hnode, user_hash(s->uname, s->uname_len));
	p->linked = true;
}

void park_count(struct session *s, bool on)
{
	struct park *p = s->park;

	if (on && !p->counted)
		STAT_INC(&s->w->stats, sessions_parked);
	else if (!on && p->counted)
		STAT_DEC(&s->w->stats, sessions_parked);
	p->counted = on;
}

/* Queue lines for the client ahead of anything else (grows as needed). */
int park_emit(struct park *p, const void *data, size_t n)
{
	if (n == 0)
		return 0; /* nothing to say (and nothing to copy from) */
	if (buf_room(&p->out) < n) {
		struct buf nb;
		buf_init(&nb, buf_len(&p->out) + n + 4096);
		if (!buf_is_empty(&p->out) &&
		    buf_append(&nb, buf_head(&p->out), buf_len(&p->out)) < 0)
			return -1;
		buf_free(&p->out);
		p->out = nb;
	}
	return buf_append(&p->out, data, n);
}

/* Move whole lines of p->out to client.out as far as it has room. True
 * when nothing is left. */
bool park_drain(struct session *s)
{
	struct park *p = s->park;

	while (!buf_is_empty(&p->out)) {
		const uint8_t *h = buf_head(&p->out);
		size_t n = buf_len(&p->out), room = buf_room(&s->client.out);

		if (n > room) {
			while (room > 0 && h[room - 1] != '\n')
				room--;
			if (room == 0)
				return false;
			n = room;
		}
		sess_put(&s->client.out, h, n);
		buf_consume(&p->out, n);
	}
	buf_free(&p->out);
	return true;
}

/* The mailbox name as an IMAP quoted string: "SELECT " + that fits the
 * proxy's own command. Returns the length, or 0 when the name cannot be
 * written so (CR, LF, NUL; 8-bit without UTF8=ACCEPT): such a session
 * does not park. */
size_t park_quote(const struct session *s, char *out, size_t cap)
{
	size_t nlen = 0, k = 0;
	const uint8_t *name = mbox_view_name(s->view, &nlen);
	bool utf8 = (mbox_feed_enabled(s->feed) & MBOX_EN_UTF8) != 0;

	if (name == NULL || nlen == 0 || cap < 2 * nlen + 3)
		return 0;
	out[k++] = '"';
	for (size_t i = 0; i < nlen; i++) {
		uint8_t c = name[i];
		if (c < 0x20 || c == 0x7f || (c >= 0x80 && !utf8))
			return 0;
		if (c == '"' || c == '\\')
			out[k++] = '\\';
		out[k++] = (char)c;
	}
	out[k++] = '"';
	out[k] = '\0';
	return k;
}

/* The watcher this session's backend gets: auto is NOTIFY where the
 * backend offers it (one watcher per user), else IDLE (one per mailbox). */
static enum cfg_watch park_watch_kind(const struct session *s)
{
	const char *caps = s->bk != NULL ? s->bk->caps : "";

	if (s->bcfg->watch != CFG_WATCH_AUTO)
		return s->bcfg->watch;
	return caps_has(caps, strlen(caps), "NOTIFY") ? CFG_WATCH_NOTIFY : CFG_WATCH_IDLE;
}

/* Is there a way to hear of changes for this session's backend? */
static bool park_watch_ready(const struct session *s)
{
	const char *caps = s->bk->caps;

	switch (park_watch_kind(s)) {
	case CFG_WATCH_EVENTS:
		return s->w->rds != NULL;
	case CFG_WATCH_IDLE:
		return caps_has(caps, strlen(caps), "IDLE");
	case CFG_WATCH_NOTIFY:
		return caps_has(caps, strlen(caps), "NOTIFY") &&
		       caps_has(caps, strlen(caps), "IDLE");
	case CFG_WATCH_AUTO:
		break;
	}
	return false;
}

bool park_possible(const struct session *s)
{
	char q[2 * MBOX_NAME_MAX + 3];
	const char *caps;

	if (s->rt->cfg->park_idle_after <= 0 || s->state != SESS_PROXYING || s->park != NULL ||
	    s->bk == NULL || s->bcfg == NULL || s->bcfg->master_user == NULL ||
	    !park_watch_ready(s))
		return false;
	caps = s->bk->caps;
	/* CONDSTORE: MODSEQ for the clients that enabled it; the wake asks
	 * for it. */
	if (!caps_has(caps, strlen(caps), "CONDSTORE"))
		return false;
	if (s->park_never || s->draining || s->backend_gone || s->backend_bye || s->skip_cmd ||
	    s->bskip || s->capline_on || !s->selected || s->sel_tag[0] != '\0')
		return false;
	if (!((s->px == PX_NORMAL && s->inflight == 0) || s->px == PX_IDLING))
		return false;
	if (!buf_is_empty(&s->client.in) || !buf_is_empty(&s->local) ||
	    !imap_tok_at_boundary(&s->ctok) || !imap_tok_at_boundary(&s->btok) ||
	    backend_cmd_pending(s->bk))
		return false;
	if (s->feed == NULL || mbox_feed_state(s->feed) != MBOX_FEED_SELECTED ||
	    !mbox_feed_reliable(s->feed) || mbox_feed_pending(s->feed) > 0 ||
	    !mbox_view_flags_exact(s->view) || mbox_view_uidvalidity(s->view) == 0)
		return false;
	return park_quote(s, q, sizeof(q)) > 0;
}

bool park_idling(const struct session *s)
{
	return s->park != NULL && s->park->idling;
}

/* ---- the end of parking ----------------------------------------------------- */

void park_free(struct session *s)
{
	struct park *p = s->park;

	if (p == NULL)
		return;
	(void)conn_compress_idle(&s->client, false);
	if (p->linked)
		hmap_remove(&s->w->parked, &p->hnode);
	park_count(s, false);
	mbox_feed_destroy(&p->feed);
	mbox_view_destroy(&p->now);
	buf_free(&p->out);
	watch_release(&p->watch);
	zfree(p, sizeof(*p));
	s->park = NULL;
}

void park_end(struct session *s)
{
	if (s->park == NULL)
		return;
	/* What the client was owed goes ahead of the last words, whole lines. */
	(void)park_drain(s);
	park_free(s);
}

void park_fail(struct session *s, const char *why, const char *bye)
{
	STAT_INC(&s->w->stats, wakes_failed);
	sess_close(s, why, bye);
	/* This may come from outside the session's own callbacks (an event,
	 * a watcher, a login that failed at once): flush the BYE now, not
	 * at CLOSE_FLUSH_TIMEOUT when the session is freed unflushed. */
	sess_run_soon(s);
}

/* ---- parking --------------------------------------------------------------- */

static void park_go(struct session *s);
static void park_watch_up(struct worker *w, const uint8_t *user, size_t ulen, const uint8_t *mbox,
                          size_t mlen);

void park_begin(struct session *s)
{
	struct park *p = zalloc(sizeof(*p));
	unsigned enabled = mbox_feed_enabled(s->feed);

	if (p == NULL)
		return;
	s->park = p;
	p->s = s;
	p->phase = PARK_SETTLING;
	buf_init(&p->out, 0);
	/* A kept session answers to the login's key; one whose client
	 * ENABLEd something differs from a fresh one, so it gets a key of its
	 * own that no login computes (only a wake with the same ENABLEs). */
	memcpy(p->key, s->reuse_key, REUSE_KEY_LEN);
	if (enabled != 0)
		p->key[REUSE_KEY_LEN - 1] ^= (uint8_t)(0x80u | enabled);
	p->keep = s->reuse_ok && s->bcfg->reuse_ttl > 0;
	p->deadline = ev_now(s->w->loop) + s->bcfg->command_timeout;
	if (park_watch_kind(s) == CFG_WATCH_NOTIFY) {
		/* The user's NOTIFY watcher, shared by all their parked sessions. */
		p->watch = watch_hold(s->w, s->rt, s->bcfg, s->uname, s->uname_len, NULL, 0, NULL,
		                      NULL, session_mbox_changed, park_watch_up);
		if (p->watch == NULL) {
			park_free(s);
			return;
		}
	} else if (park_watch_kind(s) == CFG_WATCH_IDLE) {
		/* The watcher of the user's mailbox, shared with the user's
		 * other sessions parked on it. */
		char sel[2 * MBOX_NAME_MAX + 16] = "EXAMINE ";
		size_t nlen = 0;
		const uint8_t *name = mbox_view_name(s->view, &nlen);
		bool utf8 = false;
		for (size_t i = 0; i < nlen; i++)
			utf8 |= name[i] >= 0x80;
		if (park_quote(s, sel + 8, sizeof(sel) - 8) > 0)
			p->watch = watch_hold(s->w, s->rt, s->bcfg, s->uname, s->uname_len, name,
			                      nlen, sel, utf8 ? "UTF8=ACCEPT" : NULL,
			                      session_mbox_changed, park_watch_up);
		if (p->watch == NULL) {
			park_free(s);
			return;
		}
	}
	park_link(s);
	sess_arm(s, s->bcfg->command_timeout);
	if (p->watch != NULL && !watch_up(p->watch)) {
		/* Not yet: a change after the session's last look must find a
		 * watcher watching. Nothing is sent until it is (park_step). */
		p->waiting = true;
		return;
	}
	park_go(s);
}

/* Start handing the backend over (the watcher, if any, is up). */
static void park_go(struct session *s)
{
	if (s->px == PX_IDLING) {
		/* End the backend's IDLE; the client stays in its own. */
		s->park->idling = true;
		sess_put(&s->bk->conn.out, "DONE\r\n", 6);
		sess_px_to(s, PX_PARK_DONE);
	}
	sess_run_soon(s);
}

/* Parking that has not begun (nothing sent): the session goes on as it was. */
static void park_abandon(struct session *s)
{
	park_free(s);
	sess_arm(s, sess_proxy_wait(s));
}

/* A watcher is up: the sessions waiting for it go on parking. */
static void park_watch_up(struct worker *w, const uint8_t *user, size_t ulen, const uint8_t *mbox,
                          size_t mlen)
{
	struct hmap_node *n;

	(void)mbox;
	(void)mlen;
	hmap_for_each_hash(n, &w->parked, user_hash(user, ulen))
	{
		struct session *s = hmap_entry(n, struct park, hnode)->s;
		if (s->park->waiting)
			sess_run_soon(s);
	}
}

bool park_done_answer(struct session *s, bool ok)
{
	sess_px_to(s, PX_NORMAL);
	if (ok)
		return true;
	/* The backend refused to end its IDLE: the client hears it. */
	s->park->idling = false;
	park_free(s);
	return false;
}

/* Is this "* n FETCH (... UID u ...)"? Sets *seq_r and *uid_r. Only the
 * first level of the item list is read; anything else is not a match. */
static bool parse_fetch_uid(const uint8_t *p, size_t len, uint32_t *seq_r, uint32_t *uid_r)
{
	size_t i = 2;
	uint64_t seq = 0, uid = 0;

	if (len < 12 || p[0] != '*' || p[1] != ' ')
		return false;
	while (i < len && p[i] >= '0' && p[i] <= '9' && seq <= UINT32_MAX)
		seq = seq * 10 + (p[i++] - '0');
	if (seq == 0 || seq > UINT32_MAX || len - i < 8 || memcmp(p + i, " FETCH (", 8) != 0)
		return false;
	for (i += 8; i + 4 < len; i++) {
		if ((i == 0 || p[i - 1] == '(' || p[i - 1] == ' ') && (p[i] | 0x20) == 'u' &&
		    (p[i + 1] | 0x20) == 'i' && (p[i + 2] | 0x20) == 'd' && p[i + 3] == ' ')
			break;
		if (p[i] == '(' || p[i] == '"' || p[i] == '{')
			return false; /* a nested item before UID: not read */
	}
	for (i += 4; i < len && p[i] >= '0' && p[i] <= '9' && uid <= UINT32_MAX; i++)
		uid = uid * 10 + (p[i] - '0');
	if (uid == 0 || uid > UINT32_MAX)
		return false;
	*seq_r = (uint32_t)seq;
	*uid_r = (uint32_t)uid;
	return true;
}

/* The answers to the proxy's "FETCH n:* (UID)" and "NOOP" before parking:
 * the UIDs of messages the client was told of (EXISTS) but never saw a
 * UID for. Nothing else of them reaches the client or its view: what the
 * store says beyond that is a change the wake will tell (dirty). */
static void park_learn_cb(void *arg, struct backend *b, const struct bk_reply *r)
{
	struct session *s = arg;
	struct park *p = s->park;
	uint32_t seq, uid;

	(void)b;
	if (p == NULL)
		return;
	switch (r->ev) {
	case BK_EV_CONTINUE:
		return;
	case BK_EV_UNTAGGED:
		if (!r->partial && parse_fetch_uid(r->line, r->len, &seq, &uid) &&
		    seq <= mbox_view_count(s->view) && mbox_view_uid(s->view, seq) == 0) {
			if (mbox_view_fetch(s->view, seq, uid, false, 0) < 0)
				p->fail = "UIDs out of order";
			return;
		}
		if (r->len < 5 || memcmp(r->line, "* OK ", 5) != 0)
			p->dirty = true;
		return;
	case BK_EV_DONE:
		p->asking = false;
		if (r->status != BK_ST_OK)
			p->fail = "FETCH (UID) refused";
		return;
	case BK_EV_GONE:
		p->asking = false;
		p->fail = r->why;
		return;
	}
}

/* PARK_SETTLING, px NORMAL: once nothing is in flight either way, hand the
 * backend over and park. True on progress. */
static bool park_settle(struct session *s)
{
	struct park *p = s->park;
	struct backend *b = s->bk;

	if (!p->idling && !buf_is_empty(&s->client.in) && !p->asking && !p->dirty) {
		/* A command came before the session parked: it goes on. */
		park_free(s);
		sess_arm(s, sess_proxy_wait(s));
		return true;
	}
	if (p->fail != NULL) {
		park_fail(s, p->fail, "* BYE [UNAVAILABLE] Internal error, please reconnect.");
		return true;
	}
	if (p->asking || s->inflight > 0 || !buf_is_empty(&s->local) ||
	    !imap_tok_at_boundary(&s->btok) || !buf_is_empty(&b->conn.in) ||
	    !buf_is_empty(&b->conn.out) || backend_cmd_pending(b) || s->bskip || s->capline_on)
		return false;
	if (s->backend_gone || s->backend_bye)
		return false; /* the run loop closes it */
	if (mbox_feed_state(s->feed) != MBOX_FEED_SELECTED || !mbox_feed_reliable(s->feed) ||
	    !mbox_view_flags_exact(s->view)) {
		/* Only a server breaking the rules gets here after the checks
		 * before parking; the client's IDLE cannot be given back. */
		park_fail(s, "parking: the mailbox view broke",
		          "* BYE [UNAVAILABLE] Internal error, please reconnect.");
		return true;
	}
	if (!mbox_view_uids_known(s->view)) {
		/* Messages the client knows by number only (EXISTS): a wake
		 * tells them apart by UID. A plain FETCH, during which the
		 * server may not expunge (RFC 3501 7.4.1), numbers them as the
		 * client does. */
		uint32_t n = mbox_view_count(s->view), first = 1;
		char cmd[64];
		while (first <= n && mbox_view_uid(s->view, first) != 0)
			first++;
		snprintf(cmd, sizeof(cmd), "FETCH %u:%u (UID)", first, n);
		if (backend_cmd(b, cmd, strlen(cmd), BK_CMD_SWALLOW, park_learn_cb, s) < 0) {
			park_fail(s, "parking: cannot ask for UIDs",
			          "* BYE [UNAVAILABLE] Internal error, please reconnect.");
			return true;
		}
		p->asking = true;
		return true;
	}
	if (!p->synced) {
		/* Whatever the store holds that the backend has not said yet
		 * (a change just committed, or outside IDLE), NOOP brings out
		 * now: from here on the watcher or the events say what changes. */
		if (backend_cmd(b, "NOOP", 4, BK_CMD_SWALLOW, park_learn_cb, s) < 0) {
			park_fail(s, "parking: cannot send NOOP",
			          "* BYE [UNAVAILABLE] Internal error, please reconnect.");
			return true;
		}
		p->asking = p->synced = true;
		return true;
	}
	/* One kept session per key is enough for all the user's parked
	 * sessions: the others close theirs. */
	bool give = p->keep && !reuse_has(s->w, s->bcfg, p->key);
	sess_bk_account(s);
	s->bk = NULL;
	if (give)
		reuse_park(s->w, s->rt, b, p->key, s->uname, s->uname_len, true);
	else
		backend_logout_and_destroy_later(&s->w->reaper, &b);
	if (s->counted_proxying)
		STAT_DEC(&s->w->stats, sessions_proxying);
	s->counted_proxying = false;
	buf_free(&s->local);
	buf_free(&s->capline);
	sess_to(s, SESS_PARKED);
	/* A compressed client: its deflater goes until the next reply (conn.h). */
	bool unz = conn_compress_idle(&s->client, true);
	p->phase = PARK_PARKED;
	park_count(s, true);
	STAT_INC(&s->w->stats, parks);
	s->parks++;
	if (log_enabled(LOG_LVL_DEBUG))
		sess_log(s, LOG_LVL_DEBUG,
		         give ? "parked (backend session kept)" : "parked (backend closed)");
	if (unz) {
		s->w->freed++; /* worth a malloc_trim (worker.c) */
		if (log_enabled(LOG_LVL_DEBUG))
			sess_log(s, LOG_LVL_DEBUG, "parked: COMPRESS deflate state freed");
	}
	ev_tstamp now = ev_now(s->w->loop);
	p->keepalive_at = now + s->rt->cfg->park_keepalive;
	park_timeout(s);
	return true;
}

/* ---- answered while parked --------------------------------------------------- */

/* A tag the proxy may answer itself; the others wake the session and the
 * pump refuses them as it always does. */
static bool park_tag_ok(const uint8_t *t, size_t n)
{
	return imap_tag_valid(t, n, TAG_MAX) && !backend_tag_reserved(t, n);
}

/* The line without its line end. */
static size_t line_body(const uint8_t *p, size_t n)
{
	if (n > 0 && p[n - 1] == '\n')
		n--;
	if (n > 0 && p[n - 1] == '\r')
		n--;
	return n;
}

/* SESS_PARKED: take what can be answered without a backend. True on
 * progress. Anything else wakes the session and stays in client.in. */
static bool park_input(struct session *s)
{
	struct park *p = s->park;
	bool progress = false;

	while (s->state == SESS_PARKED && !buf_is_empty(&s->client.in) &&
	       buf_room(&s->client.out) >= REPLY_ROOM) {
		struct imap_tok_unit u;
		const uint8_t *d = buf_head(&s->client.in);
		int r = imap_tok_next(&s->ctok, d, buf_len(&s->client.in), &u);

		if (r == -2)
			break;
		if (r < 0) {
			sess_close(s, imap_tok_error(&s->ctok), "* BYE Protocol error.");
			return true;
		}
		bool simple = u.type == IMAP_TOK_LINE && u.first && u.last && !u.has_literal;
		if (p->skipping || (p->idling && u.first)) {
			/* In IDLE the next line must be DONE; anything else ends
			 * the IDLE with BAD and is dropped whole (as Dovecot does). */
			if (p->idling && u.first) {
				size_t n = line_body(d, u.len);
				bool done = simple && imap_word_eq(d, n, "DONE") && n == 4;
				sess_reply(s, "%s %s", s->idle_tag,
				           done ? "OK Idle completed." : "BAD Expected DONE.");
				STAT_INC(&s->w->stats, park_answers);
				p->idling = false;
				p->skipping = !done;
			}
			imap_tok_consume(&s->ctok, &u, u.len);
			buf_consume(&s->client.in, u.len);
			if (u.type == IMAP_TOK_LINE &&
			    (u.last || (u.has_literal && !u.lit_nonsync))) {
				if (u.has_literal && !u.lit_nonsync)
					imap_tok_cancel_literal(&s->ctok);
				p->skipping = false;
			}
			progress = true;
			s->last_activity = ev_now(s->w->loop);
			continue;
		}
		struct imap_head h;
		if (!simple || imap_head_parse(d, line_body(d, u.len), &h) < 0 ||
		    !park_tag_ok(h.tag, h.tag_len)) {
			park_wake(s, true);
			return true;
		}
		bool noargs = h.rest_len == 0;
		const char *answer = NULL;
		if (imap_word_eq(h.w1, h.w1_len, "IDLE") && noargs) {
			memcpy(s->idle_tag, h.tag, h.tag_len);
			s->idle_tag[h.tag_len] = '\0';
			sess_reply(s, "+ idling");
			p->idling = true;
			p->keepalive_at = ev_now(s->w->loop) + s->rt->cfg->park_keepalive;
			answer = "";
		} else if (imap_word_eq(h.w1, h.w1_len, "NOOP") && noargs && !p->dirty) {
			answer = "OK NOOP completed.";
		} else if (imap_word_eq(h.w1, h.w1_len, "CHECK") && noargs && !p->dirty) {
			answer = "OK CHECK completed.";
		} else if (imap_word_eq(h.w1, h.w1_len, "LOGOUT") && noargs) {
			imap_tok_consume(&s->ctok, &u, u.len);
			buf_consume(&s->client.in, buf_len(&s->client.in));
			sess_reply(s, "* BYE Logging out");
			sess_reply(s, "%.*s OK Logout completed.", (int)h.tag_len, h.tag);
			sess_close(s, "logout (parked)", NULL);
			return true;
		} else {
			park_wake(s, true);
			return true;
		}
		if (answer[0] != '\0')
			sess_reply(s, "%.*s %s", (int)h.tag_len, h.tag, answer);
		STAT_INC(&s->w->stats, park_answers);
		imap_tok_consume(&s->ctok, &u, u.len);
		buf_consume(&s->client.in, u.len);
		s->last_activity = ev_now(s->w->loop);
		progress = true;
	}
	if (progress && s->state == SESS_PARKED)
		park_timeout(s); /* IDLE came or went: the keep-alives follow it */
	return progress;
}

bool park_run(struct session *s)
{
	struct park *p = s->park;
	size_t before = buf_len(&s->client.out);
	bool progress;

	if (!park_drain(s))
		return buf_len(&s->client.out) != before;
	progress = buf_len(&s->client.out) != before;
	progress |= park_input(s);
	if (s->state == SESS_PARKED && p->dirty && p->idling) {
		park_wake(s, false);
		progress = true;
	}
	return progress;
}

bool park_step(struct session *s)
{
	struct park *p = s->park;

	switch (p->phase) {
	case PARK_SETTLING:
		if (p->waiting) {
			if (!buf_is_empty(&s->client.in)) {
				park_abandon(s); /* a command came first */
				return true;
			}
			if (!watch_up(p->watch))
				return false;
			p->waiting = false;
			park_go(s);
			return true;
		}
		return s->px == PX_NORMAL && park_settle(s);
	case PARK_SYNCING:
		if (p->fail != NULL) {
			park_fail(s, p->fail,
			          "* BYE [UNAVAILABLE] Backend not available, please reconnect.");
			return true;
		}
		return false;
	case PARK_SYNCED:
		return park_synced(s);
	case PARK_DRAINING:
		if (!park_drain(s))
			return false;
		park_free(s);
		return true;
	case PARK_PARKED:
	case PARK_WAKING:
		break;
	}
	return false;
}

bool park_holds_output(const struct session *s)
{
	return s->park != NULL && !buf_is_empty(&s->park->out);
}

bool park_output(struct session *s)
{
	return s->park == NULL || park_drain(s);
}

/* ---- timers ---------------------------------------------------------------- */

void park_timeout(struct session *s)
{
	struct park *p = s->park;
	ev_tstamp now = ev_now(s->w->loop);

	if (p->phase == PARK_SETTLING && p->waiting && now >= p->deadline) {
		park_abandon(s); /* no watcher in time: stay attached */
		return;
	}
	if (p->phase != PARK_PARKED && p->phase != PARK_DRAINING) {
		if (now >= p->deadline) {
			park_fail(s,
			          p->phase == PARK_SETTLING
			              ? "parking: backend did not settle in time"
			              : "wake timed out",
			          "* BYE [UNAVAILABLE] Backend not responding, please reconnect.");
			return;
		}
		sess_arm(s, p->deadline - now);
		return;
	}
	double idle_end = s->last_activity + sess_idle_limit(s);
	if (now >= idle_end - 0.5) {
		sess_close(s, "idle timeout", "* BYE Autologout; idle for too long.");
		return;
	}
	double next = idle_end;
	if (p->phase == PARK_PARKED && p->idling) {
		if (now >= p->keepalive_at - 0.01 && buf_room(&s->client.out) >= REPLY_ROOM) {
			sess_reply(s, "* OK Still here");
			STAT_INC(&s->w->stats, park_keepalives);
			p->keepalive_at = now + s->rt->cfg->park_keepalive;
		}
		if (p->keepalive_at < next)
			next = p->keepalive_at;
	}
	sess_arm(s, next - now > 0.01 ? next - now : 0.01);
}

/* ---- changes --------------------------------------------------------------- */

/* May an event for mailbox m[0..mlen) concern a view of name n[0..nlen)?
 * Names are compared byte for byte (INBOX in any case); one that is not
 * plain ASCII may be spelt differently by the store (UTF-8) and the client
 * (modified UTF-7), so it matches every event of the user: a wake too many
 * costs a resync, a wake too few loses mail. */
static bool mailbox_may_match(const uint8_t *n, size_t nlen, const uint8_t *m, size_t mlen)
{
	if (nlen == mlen && memcmp(n, m, nlen) == 0)
		return true;
	if (imap_word_eq(n, nlen, "INBOX") && nlen == 5 && mlen == 5 && imap_word_eq(m, 5, "INBOX"))
		return true;
	/* INBOX is case-insensitive also as a parent: the client's "inbox.Sub"
	 * is the store's "INBOX.Sub" (and a sibling "inbox-x" that matches too
	 * costs a resync only). */
	if (nlen == mlen && nlen > 5 && imap_word_eq(n, 5, "INBOX") &&
	    imap_word_eq(m, 5, "INBOX") && !isalnum(n[5]) && memcmp(n + 5, m + 5, nlen - 5) == 0)
		return true;
	for (size_t i = 0; i < nlen; i++)
		if (n[i] >= 0x80 || n[i] == '&')
			return true;
	for (size_t i = 0; i < mlen; i++)
		if (m[i] >= 0x80)
			return true;
	return false;
}

static void park_changed(struct session *s)
{
	struct park *p = s->park;

	p->dirty = true;
	if (p->phase == PARK_PARKED && p->idling)
		park_wake(s, false);
}

void session_mbox_changed(struct worker *w, const uint8_t *user, size_t ulen, const uint8_t *mbox,
                          size_t mlen)
{
	struct hmap_node *n, *next;
	unsigned told = 0;

	/* park_wake may close a session (it leaves the table): step first. */
	for (n = hmap_first(&w->parked, user_hash(user, ulen)); n != NULL; n = next) {
		struct session *s = hmap_entry(n, struct park, hnode)->s;
		size_t nlen = 0;
		const uint8_t *name = mbox_view_name(s->view, &nlen);

		next = hmap_next(&w->parked, n);
		if (s->uname_len != ulen || memcmp(s->uname, user, ulen) != 0 || name == NULL ||
		    (mbox != NULL && !mailbox_may_match(name, nlen, mbox, mlen)))
			continue;
		park_changed(s);
		told++;
	}
	if (log_enabled(LOG_LVL_DEBUG))
		log_debug("worker %d: change of %.*s \"%.*s\": %u parked session(s) told", w->id,
		          (int)(ulen > 64 ? 64 : ulen), (const char *)user,
		          mbox != NULL ? (int)(mlen > 64 ? 64 : mlen) : 3,
		          mbox != NULL ? (const char *)mbox : "any", told);
}

void session_wake_parked(struct worker *w)
{
	struct list_node *n, *tmp;

	/* Events may have been missed: every parked session reads the store. */
	list_for_each_safe (n, tmp, &w->sessions) {
		struct session *s = list_entry(n, struct session, node);
		if (s->park != NULL)
			park_changed(s);
	}
}
