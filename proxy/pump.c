/*
 * pump — a logged-in session: both streams cut by imap_tok into lines and
 * literal chunks and copied to the other side as they come, with what the
 * proxy must see on the way (tags, command names, capability lists, the
 * state the backend keeps per connection), and the LOGOUT that hands the
 * backend back to the pool or the reuse cache.
 *
 *   client.in --ctok--> backend.out        backend.in --btok--> client.out
 *                                                    local --^ (proxy replies,
 *                                                    only between responses)
 *
 * Literal bodies are never held whole: a LITERAL unit moves as far as the
 * destination buffer has room. A full destination stops reading from the
 * source (conn_update arms no read watcher without room): back-pressure.
 * What the pump waits for is s->px (sess_state.h): a literal's "+", IDLE's
 * "+" and DONE, the proxy's own LOGOUT.
 *
 * COMPRESS DEFLATE (RFC 4978, compress = yes) is the proxy's: answered
 * here once nothing else is in flight either way, and from its OK on the
 * client conn inflates and deflates (conn.h); the backend's stream stays
 * plain, since the pump reads it. Capability lists the client is shown
 * after login carry COMPRESS=DEFLATE in place of the backend's COMPRESS=.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "imap_args.h"
#include "mbox_feed.h"
#include "pool.h"
#include "sess.h"

/* Room for what pump_filter_caps_line adds to a list, and its NUL. */
#define CAPS_EXTRA_ROOM 32

/* ---- attach -------------------------------------------------------------- */

/* What the proxy adds to the client's capability lists after login. */
static const char *pump_caps_extra(const struct session *s)
{
	return s->rt->cfg->compress ? " COMPRESS=DEFLATE" : "";
}

void pump_attach(struct session *s, struct backend *b, bool reused)
{
	char caps[CAPS_MAX + 1];
	char what[160];

	s->bk = b;
	sess_bk_mark(s);
	s->reused = s->reused || reused;
	if (caps_filter(b->caps, strlen(b->caps), caps, sizeof(caps)) < 0)
		caps[0] = '\0';
	backend_attach(b, sess_backend_io, s);
	sess_reply(s, "%s OK [CAPABILITY %s%s] Logged in", s->tag, caps, pump_caps_extra(s));
	sess_to(s, SESS_PROXYING);
	/* Drained while this login was under way: it leaves at once. */
	if (worker_drained(s->w, s->bcfg->name))
		s->draining = s->bk_drain = true;
	STAT_INC(&s->w->stats, logins_ok);
	if (reused)
		STAT_INC(&s->w->stats, sessions_reused);
	STAT_INC(&s->w->stats, sessions_proxying);
	s->counted_proxying = true;
	preauth_cmd_reset(s);
	buf_free(&s->cmd);

	struct imap_tok_limits lim = {.frag_size = STREAM_FRAG};
	struct imap_tok_limits clim = {.frag_size = STREAM_FRAG,
	                               .max_line = s->rt->cfg->max_line_length};
	imap_tok_init(&s->ctok, IMAP_TOK_COMMANDS, &clim);
	imap_tok_init(&s->btok, IMAP_TOK_RESPONSES, &lim);
	buf_init(&s->local, LOCAL_SIZE);
	s->client.want_input = true;
	b->conn.want_input = true;
	s->last_activity = ev_now(s->w->loop);
	sess_arm(s, sess_proxy_wait(s));
	snprintf(what, sizeof(what), "login ok on backend %s%s", s->bcfg->name,
	         reused ? " (kept session reused)" : "");
	sess_log(s, LOG_LVL_INFO, what);
	/* Run from a fresh callback: this may be the backend's. */
	sess_run_soon(s);
}

/* ---- proxying ---------------------------------------------------------- */

/* Client input is held until the backend answers (see pump_c2b). */
static bool px_gated(const struct session *s)
{
	return s->px == PX_LIT_WAIT || s->px == PX_LIT_OWN_WAIT || s->px == PX_IDLE_WAIT;
}

static bool px_logging_out(const struct session *s)
{
	return s->px == PX_LOGOUT_WAIT || s->px == PX_LOGOUT_RESET;
}

/* No command waits for a "+", and the backend is not in IDLE. */
static bool px_settled(const struct session *s)
{
	return !px_gated(s) && s->px != PX_IDLING;
}

/* May this session's backend be kept when its client logs out? */
static bool pump_can_keep(const struct session *s)
{
	const char *caps = s->bk->caps;

	return s->reuse_ok && !s->tainted && px_settled(s) && !s->skip_cmd && !s->draining &&
	       !s->backend_gone && !s->backend_bye && s->bcfg->reuse_ttl > 0 &&
	       (!s->selected || caps_has(caps, strlen(caps), "UNSELECT"));
}

/* May this session's backend go back to the shared pool through
 * UNAUTHENTICATE (RFC 8437) when its client logs out? The backend then
 * drops all of the user's state, ENABLEd extensions included. */
static bool pump_can_unauth(const struct session *s)
{
	const char *caps = s->bk->caps;

	return s->bcfg->unauthenticate && s->bk->pool != NULL && px_settled(s) && !s->skip_cmd &&
	       !s->draining && !s->backend_gone && !s->backend_bye &&
	       caps_has(caps, strlen(caps), "UNAUTHENTICATE") &&
	       (!s->selected || caps_has(caps, strlen(caps), "UNSELECT"));
}

/* A tag the proxy can track and echo (imap_tag_valid), at most TAG_MAX
 * bytes: a line with another is never forwarded. */
static bool tag_ok(const uint8_t *t, size_t n)
{
	return imap_tag_valid(t, n, TAG_MAX);
}

/* A command name: ATOM-CHARs only, so that the backend cannot read a
 * different name out of it than the proxy does. */
static bool name_ok(const uint8_t *w, size_t n)
{
	if (n == 0)
		return false;
	for (size_t i = 0; i < n; i++) {
		if (w[i] <= 0x20 || w[i] >= 0x7f || strchr("(){%*\"\\]", w[i]) != NULL)
			return false;
	}
	return true;
}

/* Commands the proxy answers itself after login and never forwards.
 * COMPRESS: the proxy parses both streams. UNAUTHENTICATE, LOGIN,
 * AUTHENTICATE: the client is logged in through the proxy, never to the
 * backend on its own terms; it may not step back to the login prompt or
 * log in as another user past routing, auth checks and rate limits.
 * STARTTLS: TLS toward the client is the proxy's. */
static const char *pump_refusal(const struct imap_head *h)
{
	/* compress = no (with yes, pump_compress answers it) */
	if (imap_word_eq(h->w1, h->w1_len, "COMPRESS"))
		return "NO [CANNOT] COMPRESS is not available through this proxy.";
	if (imap_word_eq(h->w1, h->w1_len, "UNAUTHENTICATE"))
		return "BAD Unknown command.";
	if (imap_word_eq(h->w1, h->w1_len, "LOGIN") ||
	    imap_word_eq(h->w1, h->w1_len, "AUTHENTICATE"))
		return "BAD Already logged in.";
	if (imap_word_eq(h->w1, h->w1_len, "STARTTLS"))
		return "BAD STARTTLS is not valid in this state.";
	return NULL;
}

/* Does word occur in p[0..len), ASCII case-insensitively? */
static bool line_has_word(const uint8_t *p, size_t len, const char *word)
{
	size_t wl = strlen(word);

	for (size_t i = 0; i + wl <= len; i++) {
		if (imap_word_eq(p + i, wl, word))
			return true;
	}
	return false;
}

static bool has_taint_word(const uint8_t *p, size_t len)
{
	/* CONDSTORE switched on without ENABLE (RFC 7162 3.1) stays on for
	 * the connection: never hand it on. */
	return line_has_word(p, len, "CONDSTORE") || line_has_word(p, len, "MODSEQ") ||
	       line_has_word(p, len, "CHANGEDSINCE");
}

/* ENABLE's arguments name only what a wake enables again (park.c). */
static bool enable_rebuildable(const uint8_t *p, size_t len)
{
	static const char *const known[] = {"CONDSTORE", "QRESYNC", "UTF8=ACCEPT"};
	size_t i = 0;

	while (i < len) {
		size_t j = i;
		bool ok = false;
		while (j < len && p[j] != ' ' && p[j] != '\r' && p[j] != '\n')
			j++;
		for (size_t k = 0; k < sizeof(known) / sizeof(known[0]); k++)
			ok |= j - i == strlen(known[k]) && imap_word_eq(p + i, j - i, known[k]);
		if (j > i && !ok)
			return false;
		i = j + 1;
	}
	return true;
}

/* ---- the client's mailbox view ------------------------------------------ */

/* The feed and view are made on the first command that can change what
 * they follow (SELECT, EXAMINE, ENABLE): a session that never selects a
 * mailbox pays nothing. No memory: the session goes on without a view. */
static bool pump_view_ready(struct session *s)
{
	if (s->feed != NULL)
		return true;
	if (mbox_feed_init(&s->feed) < 0 || mbox_view_init(&s->view) < 0) {
		mbox_feed_destroy(&s->feed);
		sess_log(s, LOG_LVL_WARN, "no memory for the mailbox view");
		return false;
	}
	return true;
}

/* The mailbox argument of "tag SELECT name ..." in its first line part:
 * an atom, or a quoted string (decoded). Returns its length, or
 * MBOX_NAME_MAX + 1 when it is not there whole (a literal, or too long):
 * the feed then follows the mailbox without a name, which keeps the view
 * unreliable while it is selected. */
static size_t pump_mailbox_name(const struct imap_head *h, uint8_t out[MBOX_NAME_MAX])
{
	const uint8_t *p = h->rest, *end = h->rest + h->rest_len;
	size_t n = 0;

	if (h->w2 != NULL && h->w2_len > 0 && h->w2_len <= MBOX_NAME_MAX) {
		memcpy(out, h->w2, h->w2_len);
		return h->w2_len;
	}
	if (p == end || *p != '"')
		return MBOX_NAME_MAX + 1;
	for (p++; p < end && *p != '"'; p++) {
		if (*p == '\\' && ++p == end)
			break;
		if (n == MBOX_NAME_MAX)
			return MBOX_NAME_MAX + 1;
		out[n++] = *p;
	}
	return p < end ? n : MBOX_NAME_MAX + 1;
}

/* A mailbox command (or ENABLE, learned from its answer) goes out. */
static void pump_view_command(struct session *s, const struct imap_head *h)
{
	static const struct {
		const char *name;
		enum mbox_cmd kind;
	} cmds[] = {{"SELECT", MBOX_CMD_SELECT},
	            {"EXAMINE", MBOX_CMD_EXAMINE},
	            {"CLOSE", MBOX_CMD_CLOSE},
	            {"UNSELECT", MBOX_CMD_UNSELECT}};
	uint8_t name[MBOX_NAME_MAX];
	size_t nlen = 0;

	for (size_t i = 0; i < sizeof(cmds) / sizeof(cmds[0]); i++) {
		if (!imap_word_eq(h->w1, h->w1_len, cmds[i].name))
			continue;
		if (s->feed == NULL && cmds[i].kind >= MBOX_CMD_CLOSE)
			return; /* nothing was ever selected */
		if (!pump_view_ready(s))
			return;
		if (cmds[i].kind <= MBOX_CMD_EXAMINE)
			nlen = pump_mailbox_name(h, name);
		if (mbox_feed_command(s->feed, s->view, h->tag, h->tag_len, cmds[i].kind, name,
		                      nlen) < 0)
			sess_log(s, LOG_LVL_DEBUG, "mailbox view: command not followed");
		return;
	}
	if (imap_word_eq(h->w1, h->w1_len, "ENABLE"))
		(void)pump_view_ready(s);
}

/* One unit of the backend's stream went to the client as it came. */
static void pump_view_unit(struct session *s, const struct imap_tok_unit *u, const uint8_t *p,
                           size_t n)
{
	/* -1 leaves the view unreliable, which pump_log_view reports: the
	 * stream itself is forwarded all the same. */
	if (s->feed != NULL && mbox_feed_unit(s->feed, s->view, u, p, n) < 0)
		return;
}

void pump_log_view(struct session *s)
{
	static const char *const states[] = {"none", "selecting", "selected"};
	char what[256];
	size_t nlen = 0;
	const uint8_t *name;

	if (s->feed == NULL || !log_enabled(LOG_LVL_DEBUG))
		return;
	name = mbox_view_name(s->view, &nlen);
	snprintf(what, sizeof(what),
	         "mailbox view: %s \"%.*s\" %s uidvalidity=%u uidnext=%u exists=%u "
	         "highestmodseq=%llu enabled=%u %s%s",
	         states[mbox_feed_state(s->feed)], (int)(nlen > 64 ? 64 : nlen),
	         name != NULL ? (const char *)name : "",
	         mbox_view_readonly(s->view) ? "EXAMINE" : "SELECT", mbox_view_uidvalidity(s->view),
	         mbox_view_uidnext(s->view), mbox_view_count(s->view),
	         (unsigned long long)mbox_view_highestmodseq(s->view), mbox_feed_enabled(s->feed),
	         mbox_feed_reliable(s->feed) ? "reliable" : "unreliable: ",
	         mbox_feed_reliable(s->feed) ? "" : mbox_feed_error(s->feed));
	sess_log(s, LOG_LVL_DEBUG, what);
}

/* Look for the tainting words in every line part of a command (not in its
 * literals), also across the seams between parts and fragments. */
static void pump_scan_taint(struct session *s, const uint8_t *p, size_t len, bool first)
{
	uint8_t seam[2 * TAINT_CARRY];
	size_t k = len < TAINT_CARRY ? len : TAINT_CARRY;

	if (first)
		s->carry_len = 0;
	memcpy(seam, s->carry, s->carry_len);
	memcpy(seam + s->carry_len, p, k);
	if (has_taint_word(seam, s->carry_len + k) || has_taint_word(p, len)) {
		s->tainted = true;
		/* RFC 7162 3.1: these switch CONDSTORE on as ENABLE would. */
		if (s->feed != NULL)
			mbox_feed_enable(s->feed, MBOX_EN_CONDSTORE);
	}
	/* The new carry: the last TAINT_CARRY bytes of carry + p. */
	size_t total = s->carry_len + k;
	if (len > TAINT_CARRY) {
		memcpy(s->carry, p + len - TAINT_CARRY, TAINT_CARRY);
		s->carry_len = TAINT_CARRY;
	} else {
		size_t keep = total < TAINT_CARRY ? total : TAINT_CARRY;
		memmove(s->carry, seam + total - keep, keep);
		s->carry_len = keep;
	}
}

/* Drop one unit of a command the backend will not see (skip_cmd). The
 * command ends at its last line part, or at a synchronizing literal: the
 * client waits for a "+" that never comes, having had its answer. */
static void pump_skip_unit(struct session *s, const struct imap_tok_unit *u)
{
	imap_tok_consume(&s->ctok, u, u->len);
	buf_consume(&s->client.in, u->len);
	if (u->type != IMAP_TOK_LINE)
		return;
	if (u->has_literal && !u->lit_nonsync) {
		imap_tok_cancel_literal(&s->ctok);
		s->skip_cmd = false;
	} else if (!u->has_literal && u->last) {
		s->skip_cmd = false;
	}
}

/*
 * COMPRESS from the client (compress = yes), line u with head h: 1 answered
 * (the line is consumed), 0 not yet (wait for the other commands and the
 * replies before it, then call again). The answer is a refusal through
 * s->local, or "OK DEFLATE active" straight into client.out, uncompressed,
 * with compression on from the next byte both ways (RFC 4978 3): the
 * bytes the client sent after its line are inflated, not parsed.
 */
static int pump_compress(struct session *s, const struct imap_tok_unit *u,
                         const struct imap_head *h)
{
	struct conn *c = &s->client;
	const char *no = NULL;
	size_t alen = h->rest_len;
	char ok[TAG_MAX + 32];
	int n;

	while (alen > 0 && (h->rest[alen - 1] == '\r' || h->rest[alen - 1] == '\n'))
		alen--;
	if (u->type != IMAP_TOK_LINE || !u->last || u->has_literal ||
	    !imap_word_eq(h->rest, alen, "DEFLATE") || alen != 7)
		no = "BAD [CANNOT] Only COMPRESS DEFLATE is supported.";
	else if (c->z != NULL)
		no = "NO [COMPRESSIONACTIVE] DEFLATE active already.";
	if (no != NULL) {
		if (buf_room(&s->local) < REPLY_ROOM / 2)
			return 0;
		sess_reply(s, "%.*s %s", (int)h->tag_len, h->tag, no);
		s->skip_cmd = true;
		pump_skip_unit(s, u);
		return 1;
	}
	n = snprintf(ok, sizeof(ok), "%.*s OK DEFLATE active\r\n", (int)h->tag_len, h->tag);
	/* Everything owed to the client before the OK goes first, plain. */
	if (s->inflight > 0 || !buf_is_empty(&s->local) || !imap_tok_at_boundary(&s->btok) ||
	    park_holds_output(s) || buf_room(&c->out) < (size_t)n)
		return 0;
	imap_tok_consume(&s->ctok, u, u->len);
	buf_consume(&c->in, u->len);
	sess_put(&c->out, ok, (size_t)n);
	if (conn_compress_start(c) < 0) {
		sess_close(s, "out of memory (COMPRESS)", NULL);
		return 1;
	}
	sess_log(s, LOG_LVL_INFO, "COMPRESS DEFLATE on");
	STAT_INC(&s->w->stats, compress_started);
	STAT_INC(&s->w->stats, sessions_compressed);
	return 1;
}

/*
 * Client to backend. True on progress.
 *
 * Every command's first line part shows its tag and name whole (else it is
 * refused), and every line part is looked at, so nothing the backend runs
 * escapes the proxy's view. A literal is forwarded only once the backend
 * has asked for it: a backend that refuses a command never reads its
 * literal, and would take the bytes as commands. So a line announcing a
 * literal waits until it is the only command in flight, {n+} goes on as
 * {n}, and the client's input is held (gate) until the backend's "+" or
 * its tagged answer; IDLE likewise, until "+" or a refusal says whether the
 * next line is DONE.
 */
bool pump_c2b(struct session *s)
{
	struct conn *b = &s->bk->conn;
	bool progress = false;

	/* While an internal command (backend_cmd) runs, the backend's input
	 * is the proxy's. */
	if (px_logging_out(s) || backend_cmd_pending(s->bk) || s->park != NULL)
		return false;

	while (!buf_is_empty(&s->client.in) && !px_gated(s)) {
		struct imap_tok_unit u;
		const uint8_t *p = buf_head(&s->client.in);
		int r = imap_tok_next(&s->ctok, p, buf_len(&s->client.in), &u);

		if (r == -2)
			break;
		if (r < 0) {
			const char *e = imap_tok_error(&s->ctok);
			if (e != NULL && strcmp(e, "line too long") == 0) {
				char why[96];
				STAT_INC(&s->w->stats, line_too_long);
				snprintf(why, sizeof(why), "command line over max_line_length (%u)",
				         s->rt->cfg->max_line_length);
				sess_close(s, why, "* BYE Command line too long.");
			} else {
				sess_close(s, e, "* BYE Protocol error.");
			}
			return true;
		}
		size_t n = u.len;
		if (s->skip_cmd) {
			pump_skip_unit(s, &u);
			progress = true;
			continue;
		}
		if (u.type == IMAP_TOK_LITERAL) {
			if (n > buf_room(&b->out))
				n = buf_room(&b->out);
			if (n == 0)
				break;
			sess_put(&b->out, p, n);
			imap_tok_consume(&s->ctok, &u, n);
			buf_consume(&s->client.in, n);
			progress = true;
			continue;
		}
		bool announces = u.type == IMAP_TOK_LINE && u.has_literal;
		bool idle = false;
		if (u.first && s->px == PX_IDLING) {
			/* The line that ends IDLE. Anything but a short plain line
			 * (a literal, an endless line) is not passed on: the proxy
			 * ends IDLE with its own DONE and drops the line. */
			if (buf_room(&b->out) < (n > 6 ? n : 6))
				break;
			sess_px_to(s, PX_NORMAL);
			if (u.type != IMAP_TOK_LINE || !u.last || n > 64) {
				sess_put(&b->out, "DONE\r\n", 6);
				s->skip_cmd = true;
				pump_skip_unit(s, &u);
				progress = true;
				continue;
			}
		} else if (u.first) {
			struct imap_head h;
			const char *refuse = NULL;
			bool untagged = false;
			if (imap_head_parse(p, u.len, &h) < 0 || !tag_ok(h.tag, h.tag_len)) {
				refuse =
				    h.tag_len > TAG_MAX ? "BAD Tag too long." : "BAD Invalid tag.";
				untagged = true;
			} else if (backend_tag_reserved(h.tag, h.tag_len)) {
				/* imapmux's own tags: an answer carrying one is
				 * always imapmux's (backend.h). */
				refuse = "BAD Tag reserved by the proxy.";
			} else if (!name_ok(h.w1, h.w1_len) ||
			           (u.type == IMAP_TOK_FRAGMENT && h.w1 + h.w1_len == p + u.len)) {
				refuse = "BAD Invalid command name.";
			} else if (s->rt->cfg->compress &&
			           imap_word_eq(h.w1, h.w1_len, "COMPRESS")) {
				if (pump_compress(s, &u, &h) == 0)
					break;
				progress = true;
				if (s->client.z != NULL && s->state == SESS_PROXYING)
					continue;
				return true;
			} else if ((refuse = pump_refusal(&h)) == NULL && announces &&
			           u.lit_nonsync) {
				/* RFC 7888 4: what a LITERAL- (or plain) server must
				 * answer. The backend would see only the {n} made of
				 * it; the proxy knows n and skips the literal. */
				refuse = caps_nonsync_refusal(s->bk->caps, strlen(s->bk->caps),
				                              u.literal);
			}
			if (refuse != NULL) {
				if (buf_room(&s->local) < REPLY_ROOM / 2)
					break;
				if (untagged)
					sess_reply(s, "* %s", refuse);
				else
					sess_reply(s, "%.*s %s", (int)h.tag_len, h.tag, refuse);
				s->skip_cmd = true;
				pump_skip_unit(s, &u);
				progress = true;
				continue;
			}
			idle = imap_word_eq(h.w1, h.w1_len, "IDLE");
			/* Wait to be the only command in flight (see above). */
			if ((announces || idle) && s->inflight > 0)
				break;
			if (buf_room(&b->out) < n)
				break;
			if (imap_word_eq(h.w1, h.w1_len, "LOGOUT") && u.last &&
			    (pump_can_keep(s) || pump_can_unauth(s))) {
				/* Answered by the proxy once earlier commands are
				 * done; the backend session is kept (reuse.c). */
				memcpy(s->logout_tag, h.tag, h.tag_len);
				s->logout_tag[h.tag_len] = '\0';
				sess_px_to(s, PX_LOGOUT_WAIT);
				s->client.want_input = false;
				imap_tok_consume(&s->ctok, &u, u.len);
				buf_consume(&s->client.in, u.len);
				/* Nothing after LOGOUT is ever answered. */
				buf_consume(&s->client.in, buf_len(&s->client.in));
				sess_arm(s, s->bcfg->command_timeout);
				return true;
			}
			bool opens = imap_word_eq(h.w1, h.w1_len, "SELECT") ||
			             imap_word_eq(h.w1, h.w1_len, "EXAMINE");
			if (opens || imap_word_eq(h.w1, h.w1_len, "CLOSE") ||
			    imap_word_eq(h.w1, h.w1_len, "UNSELECT")) {
				/* Until its answer a mailbox may be selected. */
				memcpy(s->sel_tag, h.tag, h.tag_len);
				s->sel_tag[h.tag_len] = '\0';
				s->sel_opens = opens;
				s->selected = true;
			}
			pump_view_command(s, &h);
			if (imap_word_eq(h.w1, h.w1_len, "ENABLE") ||
			    imap_word_eq(h.w1, h.w1_len, "NOTIFY") ||
			    imap_word_eq(h.w1, h.w1_len, "LANGUAGE")) {
				s->tainted = true;
				/* A wake rebuilds only the ENABLEs it knows. */
				if (!imap_word_eq(h.w1, h.w1_len, "ENABLE") || !u.last ||
				    !enable_rebuildable(h.rest, h.rest_len))
					s->park_never = true;
			}
			if (idle) {
				memcpy(s->idle_tag, h.tag, h.tag_len);
				s->idle_tag[h.tag_len] = '\0';
			}
			s->inflight++;
		} else {
			if (announces && s->inflight > 1)
				break;
			if (buf_room(&b->out) < n)
				break;
		}
		pump_scan_taint(s, p, n, u.first);
		if (announces && u.lit_nonsync) {
			/* "{n+}\r\n" or "{n+}\n": send it without the "+". */
			size_t plus = n - (p[n - 2] == '\r' ? 4 : 3);
			sess_put(&b->out, p, plus);
			sess_put(&b->out, p + plus + 1, n - plus - 1);
			sess_px_to(s, PX_LIT_OWN_WAIT);
		} else {
			sess_put(&b->out, p, n);
			if (announces)
				sess_px_to(s, PX_LIT_WAIT);
			else if (idle && u.last)
				sess_px_to(s, PX_IDLE_WAIT);
		}
		imap_tok_consume(&s->ctok, &u, n);
		buf_consume(&s->client.in, n);
		progress = true;
	}
	if (progress)
		s->last_activity = ev_now(s->w->loop);
	return progress;
}

/* Where the capability list of response line p[0..len) is, if it has one:
 * a "* CAPABILITY" response, or a "[CAPABILITY ...]" code in a status one. */
static bool caps_span(const uint8_t *p, size_t len, const struct imap_head *h,
                      const uint8_t **start_r, const uint8_t **end_r)
{
	static const char key[] = "[CAPABILITY ";
	size_t klen = sizeof(key) - 1;

	(void)p;
	(void)len;
	if (imap_word_eq(h->w1, h->w1_len, "CAPABILITY") && h->tag_len == 1 && h->tag[0] == '*') {
		*start_r = h->rest;
		*end_r = h->rest + h->rest_len;
		return true;
	}
	if (h->rest_len <= klen || !imap_word_eq(h->rest, klen, key))
		return false;
	*start_r = h->rest + klen;
	*end_r = memchr(*start_r, ']', h->rest_len - klen);
	if (*end_r == NULL) /* the code goes on past these bytes */
		*end_r = h->rest + h->rest_len;
	return true;
}

/* Rewrite the capability list of a whole response line so the client
 * never sees what the proxy does not carry, and sees what it adds (extra,
 * " COMPRESS=DEFLATE" or ""). out needs len + CAPS_EXTRA_ROOM bytes.
 * Returns the new length, or 0 when the line needs no change. */
static size_t pump_filter_caps_line(const uint8_t *p, size_t len, char *out, size_t outcap,
                                    const char *extra)
{
	struct imap_head h;
	const uint8_t *start, *end;

	size_t elen = strlen(extra);

	if (outcap < len + CAPS_EXTRA_ROOM || elen >= CAPS_EXTRA_ROOM ||
	    imap_head_parse(p, len, &h) < 0 || !caps_span(p, len, &h, &start, &end))
		return 0;
	size_t prefix = (size_t)(start - p), caplen = (size_t)(end - start);
	size_t tail = len - (size_t)(end - p);
	memcpy(out, p, prefix);
	long n = caps_filter((const char *)start, caplen, out + prefix, outcap - prefix);
	if (n < 0 || (elen == 0 && (size_t)n == caplen && memcmp(out + prefix, start, caplen) == 0))
		return 0;
	memcpy(out + prefix + (size_t)n, extra, elen);
	n += (long)elen;
	memcpy(out + prefix + (size_t)n, end, tail);
	return prefix + (size_t)n + tail;
}

/* Inspect the first unit of a response. Returns true when the response
 * is not for the client (the "+" the proxy asked for itself). */
static bool pump_track_response(struct session *s, const struct imap_head *h)
{
	bool untagged = h->tag_len == 1 && h->tag[0] == '*';
	bool cont = h->tag_len == 1 && h->tag[0] == '+';

	if (untagged) {
		if (imap_word_eq(h->w1, h->w1_len, "BYE"))
			s->backend_bye = true;
		return false;
	}
	if (cont) {
		enum sess_px was = s->px;
		if (was == PX_IDLE_WAIT)
			sess_px_to(s, PX_IDLING);
		else if (was == PX_LIT_WAIT || was == PX_LIT_OWN_WAIT)
			sess_px_to(s, PX_NORMAL);
		return was == PX_LIT_OWN_WAIT;
	}
	if (s->inflight > 0)
		s->inflight--;
	if (s->px == PX_PARK_DONE && strlen(s->idle_tag) == h->tag_len &&
	    memcmp(s->idle_tag, h->tag, h->tag_len) == 0)
		return park_done_answer(s, imap_word_eq(h->w1, h->w1_len, "OK"));
	/* A tagged answer while waiting for "+": the command was refused (it
	 * is the only one in flight), and its literal never goes to the
	 * backend. A {n} the client held back: its next bytes are a new
	 * command. A {n+} it sent already: drop the rest of that command. */
	if (s->px == PX_LIT_WAIT)
		imap_tok_cancel_literal(&s->ctok);
	else if (s->px == PX_LIT_OWN_WAIT)
		s->skip_cmd = true;
	if (px_gated(s))
		sess_px_to(s, PX_NORMAL);
	if (s->sel_tag[0] != '\0' && strlen(s->sel_tag) == h->tag_len &&
	    memcmp(s->sel_tag, h->tag, h->tag_len) == 0) {
		/* SELECT/EXAMINE: selected iff OK (a failed one leaves none
		 * selected, RFC 3501 6.3.1); CLOSE/UNSELECT OK: none. */
		bool ok = imap_word_eq(h->w1, h->w1_len, "OK");
		s->selected = s->sel_opens ? ok : !ok;
		s->sel_tag[0] = '\0';
	}
	if (s->px == PX_IDLING && strlen(s->idle_tag) == h->tag_len &&
	    memcmp(s->idle_tag, h->tag, h->tag_len) == 0)
		sess_px_to(s, PX_NORMAL);
	return false;
}

/* Backend to client. True on progress. */
bool pump_b2c(struct session *s)
{
	struct conn *b = &s->bk->conn;
	struct conn *c = &s->client;
	bool progress = false;

	for (;;) {
		/* A wake's lines go first (park.c). */
		if (park_holds_output(s) && imap_tok_at_boundary(&s->btok)) {
			size_t before = buf_len(&c->out);
			bool all = park_output(s);
			progress |= buf_len(&c->out) != before;
			if (!all)
				break;
		}
		if (!buf_is_empty(&s->local) && imap_tok_at_boundary(&s->btok)) {
			if (buf_room(&c->out) < buf_len(&s->local))
				break;
			sess_put(&c->out, buf_head(&s->local), buf_len(&s->local));
			buf_consume(&s->local, buf_len(&s->local));
			progress = true;
		}
		if (buf_is_empty(&b->in))
			break;
		struct imap_tok_unit u;
		const uint8_t *p = buf_head(&b->in);
		int r = imap_tok_next(&s->btok, p, buf_len(&b->in), &u);
		if (r == -2)
			break;
		if (r < 0) {
			sess_close(s, "backend protocol error",
			           "* BYE [UNAVAILABLE] Backend protocol error.");
			return true;
		}
		size_t n = u.len;
		bool as_is = true; /* the client gets the unit as it came */
		if (u.first && backend_cmd_claims(s->bk, p, &u)) {
			/* An internal command's answer: none of it for the client. */
			as_is = false;
			s->bskip = !(u.type == IMAP_TOK_LINE && u.last);
		} else if (u.type == IMAP_TOK_LITERAL && s->bskip) {
			as_is = false; /* a literal of a response not for the client */
		} else if (u.type == IMAP_TOK_LITERAL && conn_can_write_direct(c)) {
			/* Bulk data: from the backend's buffer to the client's
			 * socket (through OpenSSL), no copy into client.out. */
			ssize_t w = conn_write_direct(c, p, n);
			if (w <= 0)
				break; /* full (again from these bytes), or failed */
			n = (size_t)w;
		} else if (u.type == IMAP_TOK_LITERAL) {
			if (n > buf_room(&c->out))
				n = buf_room(&c->out);
			if (n == 0)
				break;
			sess_put(&c->out, p, n);
		} else if (s->bskip) {
			/* The rest of a line that is not for the client. */
			as_is = false;
			if (u.type == IMAP_TOK_LINE && u.last)
				s->bskip = false;
		} else if (s->capline_on) {
			as_is = false;
			/* A capability response longer than one unit: assembled
			 * whole (bounded), filtered, then passed on. */
			if (u.type == IMAP_TOK_LINE && u.has_literal) {
				sess_close(s,
				           "backend protocol error (literal in a capability list)",
				           NULL);
				return true;
			}
			if (buf_len(&s->capline) + n > CAPLINE_MAX) {
				sess_close(s, "backend capability response over the maximum", NULL);
				return true;
			}
			if (u.type == IMAP_TOK_LINE &&
			    buf_room(&c->out) < buf_len(&s->capline) + n + CAPS_EXTRA_ROOM)
				break;
			sess_put(&s->capline, p, n);
			if (u.type == IMAP_TOK_LINE) {
				char line[CAPLINE_MAX + CAPS_EXTRA_ROOM];
				size_t len = buf_len(&s->capline);
				size_t nl = pump_filter_caps_line(buf_head(&s->capline), len, line,
				                                  sizeof(line), pump_caps_extra(s));
				sess_put(&c->out,
				         nl > 0 ? (const uint8_t *)line : buf_head(&s->capline),
				         nl > 0 ? nl : len);
				buf_free(&s->capline);
				s->capline_on = false;
			}
		} else {
			char line[CAPLINE_MAX + CAPS_EXTRA_ROOM];
			size_t nl = 0;
			if (buf_room(&c->out) < n + REPLY_ROOM)
				break;
			if (u.first) {
				struct imap_head h;
				const uint8_t *cs, *ce;
				if (imap_head_parse(p, u.len, &h) == 0) {
					if (pump_track_response(s, &h)) {
						/* The "+" for a literal the proxy made synchronizing. */
						s->bskip = !(u.type == IMAP_TOK_LINE && u.last);
						imap_tok_consume(&s->btok, &u, n);
						buf_consume(&b->in, n);
						progress = true;
						continue;
					}
					if (caps_span(p, u.len, &h, &cs, &ce)) {
						if (u.type == IMAP_TOK_LINE) {
							nl = pump_filter_caps_line(
							    p, u.len, line, sizeof(line),
							    pump_caps_extra(s));
						} else {
							buf_init(&s->capline, CAPLINE_MAX);
							sess_put(&s->capline, p, n);
							s->capline_on = true;
							imap_tok_consume(&s->btok, &u, n);
							buf_consume(&b->in, n);
							progress = true;
							continue;
						}
					}
				}
			}
			if (nl > 0)
				sess_put(&c->out, line, nl);
			else
				sess_put(&c->out, p, n);
			as_is = nl == 0;
		}
		/* The client's view follows what the client is told; whole
		 * responses it is not told (the proxy's own, capability lists)
		 * are left out whole. */
		if (as_is)
			pump_view_unit(s, &u, p, n);
		imap_tok_consume(&s->btok, &u, n);
		buf_consume(&b->in, n);
		progress = true;
	}
	return progress;
}

/* The answer to the proxy's UNSELECT before the session is kept. Its
 * untagged data (flags 0) still goes to the client, which is logging out. */
static void pump_reset_done(void *arg, struct backend *b, const struct bk_reply *r)
{
	struct session *s = arg;

	(void)b;
	if (r->ev == BK_EV_UNTAGGED || r->ev == BK_EV_CONTINUE)
		return;
	s->reset_failed = !(r->ev == BK_EV_DONE && r->status == BK_ST_OK);
	if (s->px == PX_LOGOUT_RESET)
		sess_px_to(s, PX_LOGOUT_WAIT);
}

/* The LOGOUT the proxy took: every earlier command is answered. Answer it,
 * hand the backend connection back to the pool (UNAUTHENTICATE) or the
 * session to the reuse cache, close the client. */
void pump_finish_logout(struct session *s)
{
	struct backend *b = s->bk;
	bool unauth = pump_can_unauth(s);

	if (!unauth && s->selected && !s->reset_sent) {
		/* Reset first, answer after: the client's next login must find
		 * the session ready to take. */
		s->reset_sent = true;
		if (backend_cmd(b, "UNSELECT", 8, 0, pump_reset_done, s) == 0) {
			sess_px_to(s, PX_LOGOUT_RESET);
			return;
		}
		s->reset_failed = true;
	}
	if (s->px == PX_LOGOUT_RESET)
		return;
	sess_reply(s, "* BYE Logging out");
	sess_reply(s, "%s OK Logout completed.", s->logout_tag);
	/* Move the replies out of `local` before the state changes. */
	sess_put(&s->client.out, buf_head(&s->local), buf_len(&s->local));
	buf_consume(&s->local, buf_len(&s->local));
	if (s->reset_failed) {
		sess_close(s, "logout (backend reset failed)", NULL);
		return;
	}
	sess_bk_account(s);
	s->bk = NULL;
	if (unauth) {
		/* The pool resets it in the background; the client is done. */
		pool_put_back(b->pool, b, s->selected);
		sess_close(s, "logout (backend connection back to the pool)", NULL);
		return;
	}
	reuse_park(s->w, s->rt, b, s->reuse_key, s->uname, s->uname_len, false);
	sess_close(s, "logout (backend session kept)", NULL);
}

bool pump_quiet(const struct session *s)
{
	return imap_tok_at_boundary(&s->ctok) && imap_tok_at_boundary(&s->btok) &&
	       buf_is_empty(&s->client.in) && (s->inflight == 0 || s->px == PX_IDLING);
}

/*
 * The client's input ended (EOF: closed, or shut down for writing only). May
 * the session end now? Not while its remaining input can still go to the
 * backend, nor while answers to the commands it completed are owed to it: a
 * half-closed socket still reads them. A command cut off by the EOF, or an
 * IDLE that can never see its DONE, is not waited for.
 */
bool pump_client_finished(const struct session *s, bool progress)
{
	if (s->park != NULL)
		return false; /* parking or waking: bounded by its own deadline */
	if (!buf_is_empty(&s->client.in) && (progress || !buf_is_empty(&s->bk->conn.out)))
		return false;
	if (px_gated(s))
		return false; /* the backend still answers; command_timeout bounds it */
	if (!imap_tok_at_boundary(&s->ctok))
		return true;
	if (px_logging_out(s))
		return false;
	if (s->px == PX_IDLING)
		return true;
	return s->inflight == 0 && imap_tok_at_boundary(&s->btok) && buf_is_empty(&s->local);
}
