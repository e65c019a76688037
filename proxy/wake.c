/*
 * wake — a parked session takes a backend again and its client is told
 * exactly what changed (park.h has the whole picture):
 *
 *   PARKED --park_wake--> WAKING: the kept session (reuse cache, under the
 *     park's key), else a login as the user with the backend's master
 *     credentials on the same backend (login.c, no client command)
 *   --park_attach--> PROXYING/WAKE_SYNC: [ENABLE what the client enabled],
 *     SELECT or EXAMINE as the client had it, UID FETCH 1:* (UID FLAGS
 *     [MODSEQ]), through backend_cmd; their answers build p->now
 *   --park_synced--> the diff of the client's view against p->now ahead of
 *     everything else, p->now becomes the client's view; then NORMAL, or
 *     (woken by a change in IDLE) parking again
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mbox_feed.h"
#include "park.h"

/* The tag the wake's feed knows the proxy's SELECT by. */
#define WAKE_TAG "imapmux.wake"

static bool park_sync_start(struct session *s);

static void park_attach(struct session *s, struct backend *b);

static void park_login_done(struct session *s, enum login_result r, struct backend *b, bool reused)
{
	(void)reused;
	if (s->state != SESS_WAKING || s->park == NULL) {
		if (b != NULL)
			backend_destroy_later(&s->w->reaper, &b);
		return;
	}
	if (r != LOGIN_OK) {
		park_fail(s, "wake: no backend session",
		          "* BYE [UNAVAILABLE] Backend not available, please reconnect.");
		return;
	}
	park_attach(s, b);
}

void park_wake(struct session *s, bool by_client)
{
	struct park *p = s->park;
	struct backend *b = NULL;

	p->phase = PARK_WAKING;
	p->by_client = by_client;
	p->dirty = false;
	park_count(s, false);
	STAT_INC(&s->w->stats, wakes_client);
	if (!by_client) {
		STAT_DEC(&s->w->stats, wakes_client);
		STAT_INC(&s->w->stats, wakes_change);
	}
	sess_to(s, SESS_WAKING);
	p->deadline = ev_now(s->w->loop) + s->bcfg->connect_timeout + s->bcfg->command_timeout;
	sess_arm(s, p->deadline - ev_now(s->w->loop));
	if (log_enabled(LOG_LVL_DEBUG))
		sess_log(s, LOG_LVL_DEBUG,
		         by_client ? "waking (client command)" : "waking (change)");
	if (p->keep)
		b = reuse_take(s->w, s->bcfg, p->key);
	if (b != NULL) {
		STAT_INC(&s->w->stats, sessions_reused);
		park_attach(s, b);
		return;
	}
	/* The user proved the credentials at login: log in again as them
	 * with the backend's master credentials, on the same backend (the
	 * mailbox's UIDs belong to it). */
	struct login_req rq = {.user = s->uname,
	                       .ulen = s->uname_len,
	                       .verified = true,
	                       .backend = s->bcfg,
	                       .keep_key = true,
	                       .done = park_login_done};
	if (login_start(s, &rq) < 0)
		park_fail(s, "wake: out of memory", "* BYE [UNAVAILABLE] Out of memory.");
}

static void park_attach(struct session *s, struct backend *b)
{
	struct imap_tok_limits lim = {.frag_size = STREAM_FRAG};

	s->bk = b;
	sess_bk_mark(s);
	backend_attach(b, sess_backend_io, s);
	imap_tok_init(&s->btok, IMAP_TOK_RESPONSES, &lim);
	s->backend_gone = s->backend_bye = s->bskip = false;
	b->conn.want_input = true;
	sess_to(s, SESS_PROXYING);
	STAT_INC(&s->w->stats, sessions_proxying);
	s->counted_proxying = true;
	sess_px_to(s, PX_WAKE_SYNC);
	if (!park_sync_start(s))
		return;
	sess_run_soon(s);
}

static void park_sync_failed(struct session *s, const char *why)
{
	if (s->park != NULL && s->park->fail == NULL)
		s->park->fail = why;
}

enum sync_cmd { SYNC_ENABLE, SYNC_SELECT, SYNC_FETCH };

/* Rounds of "messages came during the wake's FETCH" before giving up. */
#define WAKE_REFETCH_MAX 8

static void park_fetch_cb(void *arg, struct backend *b, const struct bk_reply *r);

/*
 * Mail that arrived while the wake read the store shows as EXISTS at the
 * FETCH's end, messages whose UIDs p->now does not know: FETCH those too
 * (as often as it goes on, within WAKE_REFETCH_MAX). True when a FETCH
 * went out.
 */
static bool park_fetch_unknown(struct session *s)
{
	struct park *p = s->park;
	bool condstore = (mbox_feed_enabled(s->feed) & (MBOX_EN_CONDSTORE | MBOX_EN_QRESYNC)) != 0;
	uint32_t n = mbox_view_count(p->now), first = n;
	char cmd[80];

	while (first > 0 && mbox_view_uid(p->now, first) == 0)
		first--;
	if (first == n)
		return false;
	if (++p->refetches > WAKE_REFETCH_MAX) {
		park_sync_failed(s, "wake: the mailbox keeps changing under the wake");
		return false;
	}
	snprintf(cmd, sizeof(cmd), "FETCH %u:%u (UID FLAGS%s)", first + 1, n,
	         condstore ? " MODSEQ" : "");
	if (backend_cmd(s->bk, cmd, strlen(cmd), BK_CMD_SWALLOW, park_fetch_cb, s) < 0) {
		park_sync_failed(s, "wake: cannot queue commands");
		return false;
	}
	return true;
}

/* The answers to the wake's ENABLE, SELECT and FETCH. */
static void park_sync_reply(struct session *s, const struct bk_reply *r, enum sync_cmd cmd)
{
	struct park *p = s->park;

	if (p == NULL || p->phase != PARK_SYNCING)
		return;
	switch (r->ev) {
	case BK_EV_CONTINUE:
		park_sync_failed(s, "wake: unexpected continuation");
		return;
	case BK_EV_UNTAGGED:
		if (r->partial) {
			/* Long FLAGS lists are of no interest; anything else
			 * long cannot be read whole here. */
			if (r->len > 8 &&
			    (memcmp(r->line, "* FLAGS ", 8) == 0 ||
			     (r->len > 22 && memcmp(r->line, "* OK [PERMANENTFLAGS ", 21) == 0)))
				return;
			park_sync_failed(s, "wake: response too long to read");
			return;
		}
		if (mbox_feed_line(p->feed, p->now, r->line, r->len) < 0) {
			if (log_enabled(LOG_LVL_DEBUG)) {
				char what[200];
				snprintf(what, sizeof(what), "wake: %s in \"%.*s\"",
				         mbox_feed_error(p->feed),
				         (int)(r->len > 100 ? 100 : r->len), (const char *)r->line);
				sess_log(s, LOG_LVL_DEBUG, what);
			}
			park_sync_failed(s, "wake: unreadable response");
		}
		return;
	case BK_EV_DONE:
		if (r->status != BK_ST_OK) {
			park_sync_failed(s, "wake: the mailbox cannot be selected again");
			return;
		}
		/* The SELECT's completion is the feed's (it makes the view
		 * current); the others are not mailbox commands to it. */
		if (cmd == SYNC_SELECT &&
		    mbox_feed_tagged(p->feed, p->now, WAKE_TAG, r->line, r->len) < 0)
			park_sync_failed(s, "wake: unreadable SELECT answer");
		if (cmd == SYNC_FETCH && p->fail == NULL && !park_fetch_unknown(s) &&
		    p->fail == NULL)
			p->phase = PARK_SYNCED;
		return;
	case BK_EV_GONE:
		park_sync_failed(s, r->why != NULL ? r->why : "wake: backend lost");
		return;
	}
}

static void park_enable_cb(void *arg, struct backend *b, const struct bk_reply *r)
{
	(void)b;
	park_sync_reply(arg, r, SYNC_ENABLE);
}

static void park_select_cb(void *arg, struct backend *b, const struct bk_reply *r)
{
	(void)b;
	park_sync_reply(arg, r, SYNC_SELECT);
}

static void park_fetch_cb(void *arg, struct backend *b, const struct bk_reply *r)
{
	(void)b;
	park_sync_reply(arg, r, SYNC_FETCH);
}

/* Queue the wake's commands. False when the session is closing. */
static bool park_sync_start(struct session *s)
{
	struct park *p = s->park;
	struct backend *b = s->bk;
	unsigned en = mbox_feed_enabled(s->feed);
	bool condstore = (en & (MBOX_EN_CONDSTORE | MBOX_EN_QRESYNC)) != 0;
	char cmd[2 * MBOX_NAME_MAX + 32];
	size_t nlen = 0;
	const uint8_t *name = mbox_view_name(s->view, &nlen);
	bool readonly = mbox_view_readonly(s->view);
	int r = 0;

	p->phase = PARK_SYNCING;
	p->refetches = 0;
	if (mbox_feed_init(&p->feed) < 0 || mbox_view_init(&p->now) < 0) {
		park_fail(s, "wake: out of memory", "* BYE [UNAVAILABLE] Out of memory.");
		return false;
	}
	if (condstore)
		mbox_view_set_modseq_floor(p->now, mbox_view_highestmodseq(s->view));
	if (en != 0) {
		snprintf(cmd, sizeof(cmd), "ENABLE%s%s",
		         (en & MBOX_EN_QRESYNC)     ? " QRESYNC"
		         : (en & MBOX_EN_CONDSTORE) ? " CONDSTORE"
		                                    : "",
		         (en & MBOX_EN_UTF8) ? " UTF8=ACCEPT" : "");
		r |= backend_cmd(b, cmd, strlen(cmd), BK_CMD_SWALLOW, park_enable_cb, s);
	}
	if (mbox_feed_command(p->feed, p->now, (const uint8_t *)WAKE_TAG, strlen(WAKE_TAG),
	                      readonly ? MBOX_CMD_EXAMINE : MBOX_CMD_SELECT, name, nlen) < 0) {
		park_fail(s, "wake: cannot follow the mailbox",
		          "* BYE [UNAVAILABLE] Internal error.");
		return false;
	}
	int k = snprintf(cmd, sizeof(cmd), "%s ", readonly ? "EXAMINE" : "SELECT");
	size_t q = park_quote(s, cmd + k, sizeof(cmd) - (size_t)k);
	if (q == 0) {
		park_fail(s, "wake: mailbox name cannot be sent",
		          "* BYE [UNAVAILABLE] Internal error.");
		return false;
	}
	r |= backend_cmd(b, cmd, (size_t)k + q, BK_CMD_SWALLOW, park_select_cb, s);
	snprintf(cmd, sizeof(cmd), "UID FETCH 1:* (UID FLAGS%s)", condstore ? " MODSEQ" : "");
	r |= backend_cmd(b, cmd, strlen(cmd), BK_CMD_SWALLOW, park_fetch_cb, s);
	if (r != 0) {
		park_fail(s, "wake: cannot queue commands", "* BYE [UNAVAILABLE] Internal error.");
		return false;
	}
	return true;
}

/* Every answer is in: tell the client what changed, take the new view. */
bool park_synced(struct session *s)
{
	struct park *p = s->park;
	char *diff = NULL;
	size_t len = 0;
	const char *bad = NULL;

	if (mbox_view_uidvalidity(p->now) != mbox_view_uidvalidity(s->view))
		bad = "wake: UIDVALIDITY changed";
	else if (mbox_view_diff_enabled(s->view, p->now, mbox_feed_enabled(s->feed), &diff, &len) <
	         0)
		bad = "wake: cannot tell the client what changed";
	else if (park_emit(p, diff, len) < 0)
		bad = "wake: out of memory";
	free(diff);
	if (bad != NULL) {
		park_fail(s, bad, "* BYE [UNAVAILABLE] Mailbox changed, please reconnect.");
		return true;
	}
	mbox_view_destroy(&s->view);
	s->view = p->now;
	p->now = NULL;
	mbox_feed_destroy(&p->feed);
	if (mbox_feed_set_selected(s->feed) < 0)
		sess_log(s, LOG_LVL_WARN, "wake: mailbox view not followed");
	sess_px_to(s, PX_NORMAL);
	s->last_activity = ev_now(s->w->loop);
	if (p->idling && !p->by_client) {
		/* Woken by a change in IDLE: told, and parked again. */
		p->phase = PARK_SETTLING;
		p->deadline = ev_now(s->w->loop) + s->bcfg->command_timeout;
		sess_arm(s, s->bcfg->command_timeout);
		return true;
	}
	p->phase = PARK_DRAINING;
	sess_arm(s, sess_proxy_wait(s));
	return true;
}
