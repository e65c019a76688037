/*
 * imapbench_modes.c: what each loop does, mode by mode.
 *
 * A loop's script moves on when the tagged reply of its command arrives
 * (one command in flight per connection, never pipelined, so that a round
 * trip is one command's). c->step says which command is in flight:
 *
 *   logins   per operation: connect, [TLS], LOGIN, SELECT, LOGOUT, close
 *   latency  connect, LOGIN, SELECT; per operation: NOOP or UID FETCH
 *   bulk     connect, LOGIN, SELECT, [UID FETCH (UID RFC822.SIZE)];
 *            per operation: UID FETCH BODY.PEEK[] or APPEND {n}
 *   idle     connect, LOGIN, SELECT, IDLE; at the end DONE
 *   mix      per operation: a session of imaptest's default states
 *   (every connected loop, at the end: LOGOUT, close)
 *
 * A failure is reported with conn_fail(): the connection layer records it
 * and either kicks the loop's next operation (logins, mix) or retires the
 * loop (the others).
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "imapbench.h"

enum step {
	ST_NONE,
	ST_LOGIN,
	ST_SELECT,
	ST_SIZES,       /* bulk fetch: UID FETCH (UID RFC822.SIZE) */
	ST_OP,          /* the measured command */
	ST_APPEND_WAIT, /* APPEND {n} sent, waiting for "+" */
	ST_IDLE,        /* IDLE sent / idling */
	ST_DONE,        /* DONE sent */
	ST_MIX,         /* mix: a command of the draw */
	ST_LOGOUT,
};

#define SHOW(len) (int)((len) > 160 ? 160 : (len))

/* "x" with quotes and backslashes escaped (RFC 3501 quoted string). */
static void quote(char *out, size_t cap, const char *in)
{
	size_t o = 0;
	out[o++] = '"';
	for (; *in && o + 3 < cap; in++) {
		if (*in == '"' || *in == '\\')
			out[o++] = '\\';
		out[o++] = *in;
	}
	out[o++] = '"';
	out[o] = '\0';
}

static void send_login(struct ib_conn *c)
{
	char u[300], p[2100];
	quote(u, sizeof(u), c->user);
	quote(p, sizeof(p), c->b->password);
	c->step = ST_LOGIN;
	conn_cmd(c, "LOGIN %s %s", u, p);
}

static void send_select(struct ib_conn *c)
{
	c->step = ST_SELECT;
	c->exists = 0;
	conn_cmd(c, "SELECT \"%s\"", c->b->mailbox);
}

static void send_logout(struct ib_conn *c)
{
	c->step = ST_LOGOUT;
	conn_cmd(c, "LOGOUT");
}

/* The loop is done for the run. */
static void finish(struct ib_conn *c)
{
	conn_close(c);
	bench_loop_set(c, IB_LOOP_FINISHED);
}

/* At the end: a connected loop logs out, an unconnected one is done. */
static void end_loop(struct ib_conn *c)
{
	if (c->net == IB_NET_OPEN)
		send_logout(c);
	else
		finish(c);
}

/* Untagged "* N EXISTS" / "* N EXPUNGE": the selected mailbox's size. */
static void track_exists(struct ib_conn *c, const char *s, size_t len)
{
	char buf[64];
	if (len >= sizeof(buf))
		return;
	memcpy(buf, s, len);
	buf[len] = '\0';
	unsigned long long n;
	char word[16];
	if (sscanf(buf, "* %llu %15s", &n, word) != 2)
		return;
	if (strcmp(word, "EXISTS") == 0)
		c->exists = n;
	else if (strcmp(word, "EXPUNGE") == 0 && c->exists > 0)
		c->exists--;
}

/* The number after `key ` in s (case-sensitive, as servers send it). */
static int find_num(const char *s, size_t len, const char *key, uint64_t *out)
{
	size_t k = strlen(key);
	for (size_t i = 0; i + k < len; i++) {
		if (memcmp(s + i, key, k) != 0 || s[i + k] != ' ')
			continue;
		if (i > 0 && s[i - 1] != ' ' && s[i - 1] != '(')
			continue;
		uint64_t v = 0;
		size_t j = i + k + 1;
		if (j >= len || s[j] < '0' || s[j] > '9')
			return 0;
		while (j < len && s[j] >= '0' && s[j] <= '9' && v < (1ull << 60))
			v = v * 10 + (uint64_t)(s[j++] - '0');
		*out = v;
		return 1;
	}
	return 0;
}

static int is_fetch(const char *s, size_t len)
{
	for (size_t i = 2; i + 6 <= len; i++)
		if (memcmp(s + i, " FETCH", 6) == 0)
			return 1;
	return 0;
}

/* ---- logins ---- */

static void logins_start(struct ib_conn *c)
{
	if (c->b->phase == IB_PH_END) {
		finish(c);
		return;
	}
	if (!bench_op_begin(c))
		return;
	c->step = ST_NONE;
	conn_connect(c);
}

static void logins_tagged(struct ib_conn *c, enum ib_status st, const char *s, size_t len)
{
	if (st != IB_OK) {
		conn_fail(c, "%s: %.*s", c->step == ST_LOGIN ? "LOGIN" : "reply", SHOW(len), s);
		return;
	}
	switch (c->step) {
	case ST_LOGIN:
		send_select(c);
		break;
	case ST_SELECT:
		send_logout(c);
		break;
	case ST_LOGOUT:
		conn_close(c);
		bench_op_done(c);
		logins_start(c);
		break;
	default:
		conn_fail(c, "unexpected reply: %.*s", SHOW(len), s);
	}
}

const struct ib_mode ib_mode_logins = {
    .name = "logins",
    .reconnects = 1,
    .default_n = 100,
    .start = logins_start,
    .ready = send_login,
    .tagged = logins_tagged,
    .resume = logins_start,
};

/* ---- shared by the modes that connect once ---- */

static void once_start(struct ib_conn *c)
{
	if (c->b->phase == IB_PH_END) {
		finish(c);
		return;
	}
	c->step = ST_NONE;
	conn_connect(c);
}

/* LOGIN and SELECT replies; returns 1 when the reply was one of those
 * (and handled: after SELECT, after_select(c) runs). */
static int setup_tagged(struct ib_conn *c, enum ib_status st, const char *s, size_t len,
                        void (*after_select)(struct ib_conn *))
{
	if (c->step == ST_LOGIN) {
		if (st != IB_OK)
			conn_fail(c, "LOGIN: %.*s", SHOW(len), s);
		else
			send_select(c);
		return 1;
	}
	if (c->step == ST_SELECT) {
		if (st != IB_OK)
			conn_fail(c, "SELECT: %.*s", SHOW(len), s);
		else
			after_select(c);
		return 1;
	}
	if (c->step == ST_LOGOUT) {
		finish(c);
		return 1;
	}
	return 0;
}

/* ---- latency ---- */

static void latency_round(struct ib_conn *c)
{
	if (c->b->phase == IB_PH_END) {
		end_loop(c);
		return;
	}
	if (!bench_op_begin(c))
		return;
	c->step = ST_OP;
	c->uid_size = 0; /* FETCH responses seen */
	if (c->b->cmd_fetch)
		conn_cmd(c, "UID FETCH %" PRIu64 " (FLAGS BODY.PEEK[HEADER])", c->b->opt_uid);
	else
		conn_cmd(c, "NOOP");
}

static void latency_untagged(struct ib_conn *c, const char *s, size_t len)
{
	track_exists(c, s, len);
	if (c->step == ST_OP && is_fetch(s, len))
		c->uid_size++;
}

static void latency_tagged(struct ib_conn *c, enum ib_status st, const char *s, size_t len)
{
	if (setup_tagged(c, st, s, len, latency_round))
		return;
	if (st != IB_OK) {
		conn_fail(c, "%s: %.*s", c->b->cmd_fetch ? "UID FETCH" : "NOOP", SHOW(len), s);
		return;
	}
	if (c->b->cmd_fetch && (c->uid_size != 1 || c->lit_count != 1)) {
		conn_fail(c, "UID FETCH %" PRIu64 ": %" PRIu64 " FETCH responses, %u literals",
		          c->b->opt_uid, c->uid_size, c->lit_count);
		return;
	}
	bench_op_done(c);
	latency_round(c);
}

static void latency_resume(struct ib_conn *c)
{
	latency_round(c);
}

const struct ib_mode ib_mode_latency = {
    .name = "latency",
    .default_n = 1000,
    .start = once_start,
    .ready = send_login,
    .untagged = latency_untagged,
    .tagged = latency_tagged,
    .resume = latency_resume,
};

/* ---- bulk ---- */

/* A message of exactly `size` bytes (CRLF lines) followed by the CRLF that
 * ends the APPEND command: size + 2 bytes in all. */
static char *make_message(size_t size, const char *what)
{
	char head[512];
	int h = snprintf(head, sizeof(head),
	                 "From: imapbench <imapbench@example.invalid>\r\n"
	                 "To: <bench@example.invalid>\r\n"
	                 "Subject: imapbench %s, %zu bytes\r\n"
	                 "Date: Mon, 07 Dec 2026 00:00:00 +0000\r\n"
	                 "Message-ID: <imapbench-%zu@example.invalid>\r\n"
	                 "\r\n",
	                 what, size, size);
	if (h < 0 || (size_t)h > size)
		return NULL;
	char *m = malloc(size + 2);
	if (m == NULL)
		return NULL;
	memcpy(m, head, (size_t)h);
	size_t o = (size_t)h;
	while (size - o >= 80) {
		memset(m + o, 'x', 78);
		memcpy(m + o + 78, "\r\n", 2);
		o += 80;
	}
	size_t r = size - o;
	if (r >= 2) {
		memset(m + o, 'y', r - 2);
		memcpy(m + o + r - 2, "\r\n", 2);
	} else if (r == 1) {
		m[o] = 'z';
	}
	memcpy(m + size, "\r\n", 2);
	return m;
}

static void bulk_round(struct ib_conn *c)
{
	struct bench *b = c->b;
	if (b->phase == IB_PH_END) {
		end_loop(c);
		return;
	}
	if (!bench_op_begin(c))
		return;
	if (!b->bulk_append) {
		c->step = ST_OP;
		conn_cmd(c, "UID FETCH %" PRIu64 " BODY.PEEK[]", c->uid);
		return;
	}
	if (c->literal_plus) {
		c->step = ST_OP;
		conn_cmd(c, "APPEND \"%s\" {%" PRIu64 "+}", b->mailbox, b->append_bytes);
		conn_big(c, b->message, b->message_len + 2);
	} else {
		c->step = ST_APPEND_WAIT;
		conn_cmd(c, "APPEND \"%s\" {%" PRIu64 "}", b->mailbox, b->append_bytes);
	}
}

static void bulk_after_select(struct ib_conn *c)
{
	if (c->b->bulk_append) {
		bulk_round(c);
		return;
	}
	c->step = ST_SIZES;
	c->uid = 0;
	c->uid_size = 0;
	if (c->b->opt_uid)
		conn_cmd(c, "UID FETCH %" PRIu64 " (UID RFC822.SIZE)", c->b->opt_uid);
	else
		conn_cmd(c, "UID FETCH 1:* (UID RFC822.SIZE)");
}

static void bulk_untagged(struct ib_conn *c, const char *s, size_t len)
{
	track_exists(c, s, len);
	uint64_t uid, size;
	if (c->step == ST_SIZES && is_fetch(s, len) && find_num(s, len, "UID", &uid) &&
	    find_num(s, len, "RFC822.SIZE", &size) && (c->uid == 0 || size > c->uid_size)) {
		c->uid = uid;
		c->uid_size = size;
	}
}

static void bulk_cont(struct ib_conn *c, const char *s, size_t len)
{
	if (c->step != ST_APPEND_WAIT) {
		conn_fail(c, "unexpected continuation: %.*s", SHOW(len), s);
		return;
	}
	c->step = ST_OP;
	conn_big(c, c->b->message, c->b->message_len + 2);
}

static void bulk_tagged(struct ib_conn *c, enum ib_status st, const char *s, size_t len)
{
	struct bench *b = c->b;
	if (setup_tagged(c, st, s, len, bulk_after_select))
		return;
	if (st != IB_OK) {
		conn_fail(c, "%s: %.*s", b->bulk_append ? "APPEND" : "UID FETCH", SHOW(len), s);
		return;
	}
	if (c->step == ST_SIZES) {
		if (c->uid == 0) {
			conn_fail(c, "bulk --fetch: no message in %s%s", b->mailbox,
			          b->opt_uid ? " with that --uid" : "");
			return;
		}
		fprintf(stderr,
		        "imapbench: bulk: loop %u fetches UID %" PRIu64 " (%" PRIu64 " bytes)\n",
		        c->idx, c->uid, c->uid_size);
		bulk_round(c);
		return;
	}
	if (c->step != ST_OP) {
		conn_fail(c, "unexpected reply: %.*s", SHOW(len), s);
		return;
	}
	uint64_t moved = b->append_bytes;
	if (!b->bulk_append) {
		/* One literal, announced as the message's size, received whole. */
		if (c->lit_count != 1 || c->lit_size != c->uid_size || c->lit_got != c->uid_size) {
			conn_fail(c,
			          "UID FETCH %" PRIu64 ": %u literals, announced %" PRIu64
			          ", received %" PRIu64 ", RFC822.SIZE %" PRIu64,
			          c->uid, c->lit_count, c->lit_size, c->lit_got, c->uid_size);
			return;
		}
		moved = c->lit_got;
	}
	if (c->op_phase == IB_PH_MEASURE && b->phase == IB_PH_MEASURE)
		b->bytes += moved;
	bench_op_done(c);
	bulk_round(c);
}

static void bulk_start(struct ib_conn *c)
{
	struct bench *b = c->b;
	if (b->bulk_append && b->message == NULL) {
		b->message = make_message((size_t)b->append_bytes, "bulk");
		b->message_len = (size_t)b->append_bytes;
		if (b->message == NULL) {
			conn_fail(c, "cannot make a message of %" PRIu64 " bytes", b->append_bytes);
			return;
		}
	}
	once_start(c);
}

const struct ib_mode ib_mode_bulk = {
    .name = "bulk",
    .default_n = 10,
    .start = bulk_start,
    .ready = send_login,
    .untagged = bulk_untagged,
    .cont = bulk_cont,
    .tagged = bulk_tagged,
    .resume = bulk_round,
};

/* ---- idle ---- */

static void idle_sample(struct bench *b, int s)
{
	for (unsigned i = 0; i < b->npids; i++) {
		b->rss_kb[s][i] = proc_rss_kb(b->pids[i]);
		b->rss_tree_kb[s][i] = proc_tree_rss_kb(b->pids[i]);
		if (b->backend_port > 0) {
			b->conns_to[s][i] = proc_conns_to(b->pids[i], b->backend_port, 0);
			b->conns_tree[s][i] = proc_conns_to(b->pids[i], b->backend_port, 1);
		}
	}
	b->idle_sampled = s + 1;
	fprintf(stderr, "imapbench: idle: sample %d taken\n", s + 1);
}

static void idle_timer_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	(void)revents;
	struct bench *b = w->data;
	if (b->idle_stage == 1) {
		idle_sample(b, 0);
		b->idle_stage = 2;
		ev_timer_set(w, b->hold, 0.);
		ev_timer_start(loop, w);
		return;
	}
	idle_sample(b, 1);
	b->idle_stage = 3;
	/* The measured phase ends: every idling loop waits for the change. */
	for (unsigned i = 0; i < b->concurrency; i++)
		if (b->conns[i].loop_state == IB_LOOP_RUNNING)
			bench_loop_set(&b->conns[i], IB_LOOP_WAITING);
}

static void idle_untagged(struct ib_conn *c, const char *s, size_t len)
{
	track_exists(c, s, len);
}

static void idle_after_select(struct ib_conn *c)
{
	c->step = ST_IDLE;
	conn_cmd(c, "IDLE");
}

static void idle_cont(struct ib_conn *c, const char *s, size_t len)
{
	if (c->step != ST_IDLE || c->idling) {
		conn_fail(c, "unexpected continuation: %.*s", SHOW(len), s);
		return;
	}
	c->idling = 1;
	c->b->ops++;
	bench_loop_set(c, IB_LOOP_WAITING);
}

static void idle_tagged(struct ib_conn *c, enum ib_status st, const char *s, size_t len)
{
	if (setup_tagged(c, st, s, len, idle_after_select))
		return;
	if (c->step == ST_DONE && st == IB_OK) {
		send_logout(c);
		return;
	}
	conn_fail(c, "%s: %.*s", c->step == ST_DONE ? "DONE" : "IDLE", SHOW(len), s);
}

static void idle_resume(struct ib_conn *c)
{
	struct bench *b = c->b;
	if (b->phase == IB_PH_MEASURE) {
		/* Every session idles: settle, sample, hold, sample (the first
		 * loop resumed starts the timer for all). */
		if (b->idle_stage == 0) {
			b->idle_stage = 1;
			ev_timer_init(&b->idle_timer, idle_timer_cb, b->settle, 0.);
			b->idle_timer.data = b;
			ev_timer_start(b->loop, &b->idle_timer);
		}
		return;
	}
	if (b->phase == IB_PH_END) {
		if (c->net == IB_NET_OPEN && c->idling) {
			/* DONE ends the IDLE command: its tag answers. */
			c->step = ST_DONE;
			conn_raw(c, "DONE\r\n", 6);
		} else {
			end_loop(c);
		}
	}
}

const struct ib_mode ib_mode_idle = {
    .name = "idle",
    .default_n = 1,
    .start = once_start,
    .ready = send_login,
    .untagged = idle_untagged,
    .cont = idle_cont,
    .tagged = idle_tagged,
    .resume = idle_resume,
};

/* ---- mix: imaptest's default stress profile ----
 *
 * imaptest (Dovecot's IMAP stress tester) is not packaged in Debian 12, so
 * this is its default profile re-done: each client logs in and walks
 * imaptest's states in their order, running each with its default
 * probability in percent, then logs out and starts over. The defaults are
 * those of the ImapTest "States" page (imapwiki.org/ImapTest, now
 * dovecot.github.io/imaptest): LOGIN 100, LIST 50, STATUS 50, SELECT 100,
 * FETCH 100, FETCH2 100 (,30), COPY 33 (,5), STORE 50, DELETE 100,
 * EXPUNGE 100, APPEND 100 (,5: after each APPEND, 5% chance of another),
 * LOGOUT 100; every other state 0. What is ours, not imaptest's: FETCH
 * asks for a random subset of imaptest's fields over up to 100 messages
 * from a random start; COPY copies 1..3 messages into the same mailbox,
 * STORE changes $Label1..5 on 1..5 messages, DELETE marks 1..2 messages
 * \Deleted (imaptest's ranges are its own random ones); APPEND is one
 * message of 1 KB per command (no MULTIAPPEND). A NO to a command that
 * names messages another client may have expunged is counted in
 * "no_replies", not as an error; BAD and any other failure is an error.
 */

const char *const ib_mix_names[IB_MIX_COUNT] = {
    "LOGIN", "LIST",  "STATUS", "SELECT",  "FETCH",  "FETCH2",
    "COPY",  "STORE", "DELETE", "EXPUNGE", "APPEND", "LOGOUT",
};

const char *const ib_mix_description =
    "imaptest default states: LOGIN 100, LIST 50, STATUS 50, SELECT 100, FETCH 100, FETCH2 100, "
    "COPY 33, STORE 50, DELETE 100, EXPUNGE 100, APPEND 100 (+5% another), LOGOUT 100";

static const struct {
	int percent;
	int needs_selected;
	int needs_messages;
} mix_states[IB_MIX_COUNT] = {
    [IB_MIX_LOGIN] = {100, 0, 0},   [IB_MIX_LIST] = {50, 0, 0},    [IB_MIX_STATUS] = {50, 0, 0},
    [IB_MIX_SELECT] = {100, 0, 0},  [IB_MIX_FETCH] = {100, 1, 1},  [IB_MIX_FETCH2] = {100, 1, 1},
    [IB_MIX_COPY] = {33, 1, 1},     [IB_MIX_STORE] = {50, 1, 1},   [IB_MIX_DELETE] = {100, 1, 1},
    [IB_MIX_EXPUNGE] = {100, 1, 0}, [IB_MIX_APPEND] = {100, 0, 0}, [IB_MIX_LOGOUT] = {100, 0, 0},
};

#define MIX_MAX_APPENDS 10

static unsigned rnd(unsigned n)
{
	return n ? (unsigned)(random() % n) : 0;
}

/* A range of up to `most` messages from a random start: "a:b". */
static void mix_range(const struct ib_conn *c, unsigned most, char *out, size_t cap)
{
	uint64_t n = c->exists, len = 1 + rnd(most);
	if (len > n)
		len = n;
	uint64_t start = 1 + rnd((unsigned)(n - len + 1));
	snprintf(out, cap, "%" PRIu64 ":%" PRIu64, start, start + len - 1);
}

static void mix_send(struct ib_conn *c, int cmd)
{
	struct bench *b = c->b;
	char range[48];
	c->mix_cmd = cmd;
	c->step = ST_MIX;
	if (b->phase == IB_PH_MEASURE && c->op_phase == IB_PH_MEASURE)
		b->commands[cmd]++;
	switch (cmd) {
	case IB_MIX_LIST:
		conn_cmd(c, "LIST \"\" *");
		break;
	case IB_MIX_STATUS:
		conn_cmd(c, "STATUS \"%s\" (MESSAGES UNSEEN RECENT)", b->mailbox);
		break;
	case IB_MIX_SELECT:
		c->exists = 0;
		conn_cmd(c, "SELECT \"%s\"", b->mailbox);
		break;
	case IB_MIX_FETCH: {
		static const char *const fields[] = {
		    "FLAGS",
		    "ENVELOPE",
		    "INTERNALDATE",
		    "BODY",
		    "BODYSTRUCTURE",
		    ("BODY.PEEK[HEADER.FIELDS (From To Cc Subject Message-ID In-Reply-To "
		     "References Delivered-To)]")};
		char what[400] = "UID";
		for (size_t i = 0; i < sizeof(fields) / sizeof(fields[0]); i++)
			if (rnd(2)) {
				strcat(what, " ");
				strcat(what, fields[i]);
			}
		uint64_t n = c->exists, start = n > 100 ? 1 + rnd((unsigned)(n - 99)) : 1;
		uint64_t end = n > 100 ? start + 99 : n;
		conn_cmd(c, "FETCH %" PRIu64 ":%" PRIu64 " (%s)", start, end, what);
		break;
	}
	case IB_MIX_FETCH2:
		conn_cmd(c, "FETCH %u (BODY.PEEK[])", 1 + rnd((unsigned)c->exists));
		break;
	case IB_MIX_COPY:
		mix_range(c, 3, range, sizeof(range));
		conn_cmd(c, "COPY %s \"%s\"", range, b->mailbox);
		break;
	case IB_MIX_STORE:
		mix_range(c, 5, range, sizeof(range));
		conn_cmd(c, "STORE %s %cFLAGS.SILENT ($Label%u)", range, rnd(2) ? '+' : '-',
		         1 + rnd(5));
		break;
	case IB_MIX_DELETE:
		mix_range(c, 2, range, sizeof(range));
		conn_cmd(c, "STORE %s +FLAGS.SILENT (\\Deleted)", range);
		break;
	case IB_MIX_EXPUNGE:
		conn_cmd(c, "EXPUNGE");
		break;
	case IB_MIX_APPEND:
		if (c->literal_plus) {
			conn_cmd(c, "APPEND \"%s\" {%zu+}", b->mailbox, b->mix_message_len);
			conn_big(c, b->mix_message, b->mix_message_len + 2);
		} else {
			c->step = ST_APPEND_WAIT;
			conn_cmd(c, "APPEND \"%s\" {%zu}", b->mailbox, b->mix_message_len);
		}
		break;
	case IB_MIX_LOGOUT:
		c->step = ST_LOGOUT;
		conn_cmd(c, "LOGOUT");
		break;
	default:
		conn_fail(c, "mix: no command %d", cmd);
	}
}

/* The next state after c->mix_state that the draw picks (LOGOUT always). */
static void mix_next(struct ib_conn *c)
{
	for (int s = c->mix_state + 1; s < IB_MIX_COUNT; s++) {
		int selected = c->mix_state >= IB_MIX_SELECT;
		if (mix_states[s].needs_selected && !selected)
			continue;
		if (mix_states[s].needs_messages && c->exists == 0)
			continue;
		if ((int)rnd(100) >= mix_states[s].percent)
			continue;
		c->mix_state = s;
		c->mix_appends = 0;
		mix_send(c, s);
		return;
	}
	c->mix_state = IB_MIX_LOGOUT;
	mix_send(c, IB_MIX_LOGOUT);
}

static void mix_start(struct ib_conn *c)
{
	struct bench *b = c->b;
	if (b->mix_message == NULL) {
		b->mix_message = make_message(1024, "mix");
		b->mix_message_len = 1024;
	}
	if (b->phase == IB_PH_END) {
		finish(c);
		return;
	}
	if (!bench_op_begin(c))
		return;
	c->step = ST_NONE;
	c->mix_state = IB_MIX_LOGIN;
	c->exists = 0;
	conn_connect(c);
}

static void mix_ready(struct ib_conn *c)
{
	struct bench *b = c->b;
	if (b->phase == IB_PH_MEASURE && c->op_phase == IB_PH_MEASURE)
		b->commands[IB_MIX_LOGIN]++;
	send_login(c);
}

static void mix_untagged(struct ib_conn *c, const char *s, size_t len)
{
	track_exists(c, s, len);
}

static void mix_cont(struct ib_conn *c, const char *s, size_t len)
{
	if (c->step != ST_APPEND_WAIT) {
		conn_fail(c, "unexpected continuation: %.*s", SHOW(len), s);
		return;
	}
	c->step = ST_MIX;
	conn_big(c, c->b->mix_message, c->b->mix_message_len + 2);
}

static void mix_tagged(struct ib_conn *c, enum ib_status st, const char *s, size_t len)
{
	struct bench *b = c->b;
	if (c->step == ST_LOGIN) {
		if (st != IB_OK) {
			conn_fail(c, "LOGIN: %.*s", SHOW(len), s);
			return;
		}
		mix_next(c);
		return;
	}
	if (c->step == ST_LOGOUT) {
		conn_close(c);
		bench_op_done(c);
		mix_start(c);
		return;
	}
	if (st != IB_OK) {
		int may_no = c->mix_cmd == IB_MIX_FETCH || c->mix_cmd == IB_MIX_FETCH2 ||
		             c->mix_cmd == IB_MIX_COPY || c->mix_cmd == IB_MIX_STORE ||
		             c->mix_cmd == IB_MIX_DELETE;
		if (st != IB_NO || !may_no || c->step == ST_APPEND_WAIT) {
			conn_fail(c, "%s: %.*s", ib_mix_names[c->mix_cmd], SHOW(len), s);
			return;
		}
		if (b->phase == IB_PH_MEASURE)
			b->no_replies++;
	}
	/* imaptest's second APPEND probability, at most MIX_MAX_APPENDS in a
	 * row so that every session is bounded. */
	if (c->mix_cmd == IB_MIX_APPEND && c->mix_appends < MIX_MAX_APPENDS && rnd(100) < 5) {
		c->mix_appends++;
		mix_send(c, IB_MIX_APPEND);
		return;
	}
	mix_next(c);
}

const struct ib_mode ib_mode_mix = {
    .name = "mix",
    .reconnects = 1,
    .default_n = 100,
    .start = mix_start,
    .ready = mix_ready,
    .untagged = mix_untagged,
    .cont = mix_cont,
    .tagged = mix_tagged,
    .resume = mix_start,
};
