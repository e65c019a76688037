/*
 * session — one client connection's life: accept, the PROXY header, the
 * state and its one transition function, the run loop, timers, closing,
 * drain and kick. What happens in each state is another file's (sess.h):
 * preauth.c before login, login.c during it, pump.c after it.
 *
 *   accept -> [PROXYHDR] -> [HANDSHAKE] -> PREAUTH <-> STARTTLS -> HANDSHAKE -> PREAUTH
 *   PREAUTH -> LOGIN -> PROXYING -> CLOSING -> (freed)
 *              LOGIN -> PREAUTH (credentials refused, backend unavailable)
 *   any -> CLOSING (BYE if the stream is at a response boundary) -> freed
 *
 * The run loop (sess_run) is the one place I/O happens: read both sides,
 * let the current stage take what it can, flush both sides, then decide
 * whether the session ends; it repeats while anything moved, up to
 * RUN_ROUNDS, and re-arms exactly the watchers needed (sess_update).
 *
 * Invariants:
 *   - s->state and s->px change only through sess_to()/sess_px_to(),
 *     which refuse a move sess_state.c does not allow;
 *   - a session is freed only by the worker's reaper (sess_free_later), never
 *     inside its own callbacks; the backend likewise;
 *   - proxy-made lines reach the client only at a response boundary;
 *   - credentials live in the command buffer until handed to the login
 *     pipeline and are wiped then; no log line carries them.
 */
#include "session.h"

#include <arpa/inet.h>
#include <assert.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "admit.h"
#include "mbox_feed.h"
#include "proxyproto.h"
#include "sess.h"
#include "sessions_api.h"
#include "zone.h"

static unsigned long next_session_id(void)
{
	static _Atomic unsigned long counter;

	return atomic_fetch_add(&counter, 1) + 1;
}

static void sess_run(struct session *s);
static int sess_proxy_header(struct session *s);

/* ---- list, lifetime ---------------------------------------------------- */

static void sess_link(struct session *s)
{
	struct worker *w = s->w;

	list_push_front(&w->sessions, &s->node);
	w->nsessions++;
}

static void sess_unlink(struct session *s)
{
	struct worker *w = s->w;

	list_remove(&s->node);
	w->nsessions--;
}

static void sess_reap(struct defer *d)
{
	struct session *s = (struct session *)d;

	conn_close(&s->client);
	free(s->phdr);
	preauth_cmd_reset(s); /* wipes what a login left there */
	buf_free(&s->cmd);
	buf_free(&s->local);
	buf_free(&s->capline);
	mbox_feed_destroy(&s->feed);
	mbox_view_destroy(&s->view);
	runtime_unref(&s->rt);
	zfree(s, sizeof(*s));
}

static void sess_free_later(struct session *s)
{
	if (s->state == SESS_DEAD)
		return;
	sess_to(s, SESS_DEAD);
	STAT_DEC(&s->w->stats, sessions_active);
	if (s->conn_counted)
		admit_conn_done();
	if (s->ip_counted)
		admit_ip_done(s->ipkey);
	s->conn_counted = s->ip_counted = false;
	if (s->counted_proxying)
		STAT_DEC(&s->w->stats, sessions_proxying);
	if (s->client.z != NULL)
		STAT_DEC(&s->w->stats, sessions_compressed);
	STAT_ADD(&s->w->stats, client_bytes_in, s->client.bytes_in);
	STAT_ADD(&s->w->stats, client_bytes_out, s->client.bytes_out);
	ev_timer_stop(s->w->loop, &s->timer);
	login_abort(s);
	park_end(s);
	conn_stop(&s->client);
	ev_clear_pending(s->w->loop, &s->client.rio);
	ev_clear_pending(s->w->loop, &s->client.wio);
	backend_destroy_later(&s->w->reaper, &s->bk);
	sess_unlink(s);
	s->defer.fn = sess_reap;
	reaper_defer(&s->w->reaper, &s->defer);
}

/* ---- output helpers ---------------------------------------------------- */

/* Append bytes whose room the caller has checked. */
void sess_put(struct buf *b, const void *p, size_t n)
{
	if (buf_append(b, p, n) < 0)
		log_error("internal: buffer overrun avoided (%zu bytes)", n);
}

/* Queue a proxy-made line for the client. Before login it goes straight to
 * the output; during proxying to `local`, flushed at a response boundary.
 * The line is sized from what it carries (a login OK holds the backend's
 * capability list): a short one on the stack, a longer one on the heap. */
void sess_reply(struct session *s, const char *fmt, ...)
{
	char small[1024], *line = small;
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(small, sizeof(small), fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	if ((size_t)n + 2 >= sizeof(small)) {
		line = malloc((size_t)n + 3);
		if (line == NULL) {
			log_warn("S-%lu %s@%s reply dropped: out of memory", s->id, s->user,
			         s->peer);
			return;
		}
		va_start(ap, fmt);
		(void)vsnprintf(line, (size_t)n + 1, fmt, ap);
		va_end(ap);
	}
	line[n++] = '\r';
	line[n++] = '\n';
	struct buf *dst = s->state == SESS_PROXYING ? &s->local : &s->client.out;
	if (buf_append(dst, line, (size_t)n) < 0)
		log_warn("S-%lu %s@%s reply dropped: output full", s->id, s->user, s->peer);
	if (line != small)
		free(line);
}

void sess_log(struct session *s, enum log_level lvl, const char *what)
{
	if (log_enabled(lvl))
		log_msg(lvl, "S-%lu %s@%s %s", s->id, s->user[0] ? s->user : "-", s->peer, what);
}

void sess_log_login_failed(struct session *s, const char *result, const char *why)
{
	char id[32];

	if (!log_enabled(LOG_LVL_INFO))
		return;
	snprintf(id, sizeof(id), "S-%lu", s->id);
	const struct log_field f[] = {
	    {"event", "login_failed", false}, {"session", id, false},
	    {"client", s->peer, false},       {"ip", s->ip, false},
	    {"result", result, false},        {"user", s->user[0] ? s->user : "-", false},
	    {"reason", why, false},
	};
	log_fields(LOG_LVL_INFO, "login failed", f, sizeof(f) / sizeof(f[0]));
}

/* ---- states ------------------------------------------------------------ */

/* A move the tables refuse is the proxy's bug, never the client's doing. */
static void sess_illegal(struct session *s, const char *from, const char *to)
{
	log_error("S-%lu %s@%s internal: illegal state change %s -> %s", s->id,
	          s->user[0] ? s->user : "-", s->peer, from, to);
#ifndef NDEBUG
	abort();
#endif
}

void sess_to(struct session *s, enum sess_state to)
{
	if (!sess_move_ok(s->state, to)) {
		sess_illegal(s, sess_state_name(s->state), sess_state_name(to));
		if (to != SESS_CLOSING && to != SESS_DEAD)
			sess_close(s, "internal error (illegal state change)", NULL);
		return;
	}
	s->state = to;
	if (to == SESS_PROXYING)
		s->px = PX_NORMAL;
}

void sess_px_to(struct session *s, enum sess_px to)
{
	if (s->state != SESS_PROXYING || !sess_px_move_ok(s->px, to)) {
		sess_illegal(s, sess_px_name(s->px), sess_px_name(to));
		sess_close(s, "internal error (illegal state change)", NULL);
		return;
	}
	s->px = to;
}

void sess_run_soon(struct session *s)
{
	ev_feed_event(s->w->loop, &s->client.wio, EV_WRITE);
}

/* Remember a printable, bounded form of the user name for log lines. */
void sess_set_user(struct session *s, const uint8_t *u, size_t len)
{
	size_t i, n = len < sizeof(s->user) - 1 ? len : sizeof(s->user) - 1;

	for (i = 0; i < n; i++)
		s->user[i] = (u[i] > 0x20 && u[i] < 0x7f) ? (char)u[i] : '?';
	s->user[n] = '\0';
}

void sess_set_tag(struct session *s, const uint8_t *tag, size_t len)
{
	if (len > TAG_MAX)
		len = TAG_MAX;
	memcpy(s->tag, tag, len);
	s->tag[len] = '\0';
}

/* ---- timers ------------------------------------------------------------ */

void sess_arm(struct session *s, double secs)
{
	ev_timer_stop(s->w->loop, &s->timer);
	ev_timer_set(&s->timer, secs, 0.);
	ev_timer_start(s->w->loop, &s->timer);
}

double sess_idle_limit(const struct session *s)
{
	double t = s->rt->cfg->idle_timeout;

	if ((s->px == PX_IDLING || s->px == PX_IDLE_WAIT || park_idling(s)) && t < IDLE_MIN_TIMEOUT)
		t = IDLE_MIN_TIMEOUT;
	return t;
}

double sess_proxy_wait(const struct session *s)
{
	double t = sess_idle_limit(s), pa = s->rt->cfg->park_idle_after;

	return pa > 0 && pa < t ? pa : t;
}

static void sess_timeout(struct ev_loop *loop, ev_timer *t, int revents)
{
	struct session *s = t->data;

	(void)revents;
	switch (s->state) {
	case SESS_NEW: /* never outlives session_accept */
		sess_close(s, "pre-login timeout", NULL);
		break;
	case SESS_PROXYHDR:
		sess_close(s, "no PROXY header in time", NULL);
		break;
	case SESS_HANDSHAKE:
	case SESS_PREAUTH:
	case SESS_STARTTLS:
	case SESS_LOGIN:
		sess_close(s, "pre-login timeout",
		           s->tls_active || s->lcfg->tls != CFG_TLS_IMPLICIT
		               ? "* BYE Disconnected for inactivity."
		               : NULL);
		break;
	case SESS_PROXYING: {
		if (s->px == PX_LOGOUT_WAIT || s->px == PX_LOGOUT_RESET) {
			/* Earlier commands never finished: no reuse. */
			sess_close(s, "logout: backend did not finish", "* BYE Logging out");
			break;
		}
		if (s->park != NULL) {
			park_timeout(s);
			break;
		}
		if (s->client.eof) {
			sess_close(s, "client closed; answers stalled", NULL);
			break;
		}
		double left = s->last_activity + sess_idle_limit(s) - ev_now(loop);
		if (left > 0.5) {
			double pa = s->rt->cfg->park_idle_after;
			if (pa > 0) {
				/* Quiet long enough: park; not possible now: look
				 * again after another park_idle_after. */
				double pl = s->last_activity + pa - ev_now(loop);
				if (pl <= 0.01 && park_possible(s)) {
					park_begin(s);
					break;
				}
				if (pl <= 0.01)
					pl = pa;
				if (pl < left)
					left = pl;
			}
			sess_arm(s, left);
			return;
		}
		sess_close(s, "idle timeout", "* BYE Autologout; idle for too long.");
		break;
	}
	case SESS_PARKED:
	case SESS_WAKING:
		park_timeout(s);
		break;
	case SESS_CLOSING:
		sess_free_later(s);
		return;
	case SESS_DEAD:
		return;
	}
	sess_run(s);
}

/* ---- closing ----------------------------------------------------------- */

static bool sess_client_usable(const struct session *s)
{
	return !s->client.error && !s->client.eof &&
	       (s->state != SESS_HANDSHAKE && s->state != SESS_STARTTLS &&
	        s->state != SESS_PROXYHDR);
}

/*
 * End the session: say bye (a full line without CRLF) if the client can
 * take it at a clean point, close the backend, flush, then free.
 */
/* The bytes per parked session (BENCHMARKS.md) are counted on this: a
 * session stays in zone.c's 1920-byte class. */
_Static_assert(sizeof(struct session) <= 1920, "struct session outgrew its zone class");

void sess_bk_mark(struct session *s)
{
	s->bk_base_in = s->bk->conn.bytes_in;
	s->bk_base_out = s->bk->conn.bytes_out;
}

void sess_bk_account(struct session *s)
{
	if (s->bk == NULL)
		return;
	s->bk_in += s->bk->conn.bytes_in - s->bk_base_in;
	s->bk_out += s->bk->conn.bytes_out - s->bk_base_out;
	sess_bk_mark(s);
}

static const char *sess_tls_version(const struct session *s)
{
	if (s->client.ssl != NULL)
		return SSL_get_version(s->client.ssl);
	if (s->client.t13 != NULL)
		return "TLSv1.3"; /* handed over from OpenSSL (conn_shed_tls) */
	return "none";
}

/* The one line a session leaves when it ends (README "Logs"): key=value,
 * or one JSON object with log_format = json. */
static void sess_log_end(struct session *s, const char *reason)
{
	char id[32], dur[32], cin[24], cout[24], bin[24], bout[24], parks[16];
	const char *backend = s->bcfg != NULL ? s->bcfg->name : "-";

	snprintf(id, sizeof(id), "S-%lu", s->id);
	snprintf(dur, sizeof(dur), "%.3f", ev_now(s->w->loop) - s->started);
	snprintf(cin, sizeof(cin), "%llu", s->client.bytes_in);
	snprintf(cout, sizeof(cout), "%llu", s->client.bytes_out);
	snprintf(bin, sizeof(bin), "%llu", s->bk_in);
	snprintf(bout, sizeof(bout), "%llu", s->bk_out);
	snprintf(parks, sizeof(parks), "%u", s->parks);
	const struct log_field f[] = {
	    {"event", "session_end", false},
	    {"session", id, false},
	    {"client", s->peer, false},
	    {"listener", s->lcfg->name, false},
	    {"tls", sess_tls_version(s), false},
	    {"user", s->user[0] ? s->user : "-", false},
	    {"method", s->method != NULL ? s->method : "-", false},
	    {"backend", s->bk_in + s->bk_out > 0 || s->method != NULL ? backend : "-", false},
	    {"reused", s->reused ? "yes" : "no", false},
	    {"parked", parks, true},
	    {"duration", dur, true},
	    {"client_in", cin, true},
	    {"client_out", cout, true},
	    {"backend_in", bin, true},
	    {"backend_out", bout, true},
	    {"end", reason, false},
	};
	log_fields(LOG_LVL_INFO, "session end", f, sizeof(f) / sizeof(f[0]));
}

void sess_close(struct session *s, const char *reason, const char *bye)
{
	if (s->state == SESS_CLOSING || s->state == SESS_DEAD)
		return;
	s->reason = reason;
	park_end(s); /* a wake's lines go out first, whole */
	bool proxying = s->state == SESS_PROXYING;
	bool say_bye =
	    bye != NULL && sess_client_usable(s) && (!proxying || imap_tok_at_boundary(&s->btok));
	if (say_bye && proxying && !buf_is_empty(&s->local))
		sess_put(&s->client.out, buf_head(&s->local), buf_len(&s->local));
	sess_to(s, SESS_CLOSING); /* from here sess_reply writes to client.out */
	if (say_bye)
		sess_reply(s, "%s", bye);
	pump_log_view(s);
	sess_bk_account(s);
	if (log_enabled(LOG_LVL_INFO))
		sess_log_end(s, reason);
	login_abort(s);
	backend_destroy_later(&s->w->reaper, &s->bk);
	s->client.want_input = false;
	/* EOF only ends the client's input: a half-closed socket still takes
	 * the last words (bounded by CLOSE_FLUSH_TIMEOUT). */
	if (s->client.error || conn_out_idle(&s->client)) {
		sess_free_later(s);
		return;
	}
	sess_arm(s, CLOSE_FLUSH_TIMEOUT);
}

/* ---- the loop body ----------------------------------------------------- */

static void sess_update(struct session *s)
{
	if (s->state == SESS_DEAD)
		return;
	if (s->state == SESS_PROXYING)
		s->client.want_input = s->px != PX_LOGOUT_WAIT && s->px != PX_LOGOUT_RESET &&
		                       buf_room(&s->local) >= REPLY_ROOM / 2;
	else if (s->state == SESS_PARKED)
		s->client.want_input = buf_room(&s->client.out) >= REPLY_ROOM;
	conn_update(&s->client);
	if (s->bk != NULL && s->state == SESS_PROXYING)
		conn_update(&s->bk->conn);
	if (buf_is_empty(&s->client.in) && buf_is_empty(&s->client.out))
		buf_free(&s->client.in), buf_free(&s->client.out);
	if (s->bk != NULL && s->state == SESS_PROXYING && buf_is_empty(&s->bk->conn.in) &&
	    buf_is_empty(&s->bk->conn.out))
		conn_release_buffers(&s->bk->conn);
}

static void sess_run(struct session *s)
{
	int rounds = 0;
	bool progress = false;
	bool moved = false;

	do {
		moved = moved || progress;
		progress = false;
		if (s->state == SESS_DEAD)
			return;
		if (s->state == SESS_PROXYHDR) {
			if (sess_proxy_header(s) != 0)
				break;
			progress = true;
			continue;
		}

		int r = conn_read(&s->client);
		if (r == -1) {
			if (s->state == SESS_HANDSHAKE)
				STAT_INC(&s->w->stats, tls_handshake_failed);
			sess_close(s, s->client.errmsg ? s->client.errmsg : "client error", NULL);
			if (s->state == SESS_DEAD)
				return;
		}
		progress |= r == 0;
		if (s->state == SESS_HANDSHAKE && conn_handshake_done(&s->client) &&
		    !s->client.error) {
			preauth_tls_up(s);
			progress = true;
		}
		if (s->state == SESS_PROXYING && !s->backend_gone) {
			r = conn_read(&s->bk->conn);
			if (r == -1 || s->bk->conn.eof)
				s->backend_gone = true;
			progress |= r == 0;
		}

		if (s->state == SESS_PREAUTH)
			progress |= preauth_input(s);
		if (s->state == SESS_PARKED)
			progress |= park_run(s);
		if (s->state == SESS_PROXYING)
			progress |= pump_c2b(s);
		if (s->state == SESS_PROXYING)
			progress |= pump_b2c(s);
		if (s->state == SESS_PROXYING && s->park != NULL)
			progress |= park_step(s);

		if (s->state == SESS_PROXYING && !s->backend_gone) {
			r = conn_flush(&s->bk->conn);
			if (r == -1)
				s->backend_gone = true;
			else
				backend_cmd_kick(s->bk); /* a queued internal command may fit now */
			progress |= r == 0;
		}
		r = conn_flush(&s->client);
		if (r == -1) {
			sess_close(s, s->client.errmsg ? s->client.errmsg : "client error", NULL);
			if (s->state == SESS_DEAD)
				return;
		}
		progress |= r == 0;
		/* Parked: the keys are enough, OpenSSL's ~14 KB go (conn.h). */
		if (s->state == SESS_PARKED && s->client.ssl != NULL && conn_shed_tls(&s->client)) {
			STAT_INC(&s->w->stats, tls_shed);
			s->w->freed++; /* worth a malloc_trim (worker.c) */
			if (log_enabled(LOG_LVL_DEBUG))
				sess_log(s, LOG_LVL_DEBUG, "TLS handed over from OpenSSL");
		}

		if (s->state == SESS_STARTTLS && buf_is_empty(&s->client.out)) {
			SSL_CTX *ctx = s->rt->listen_ctx[s->lidx];
			if (conn_start_tls(&s->client, ctx, true, NULL) < 0) {
				sess_close(s, "cannot start TLS", NULL);
				return;
			}
			s->starttls_done = true;
			sess_to(s, SESS_HANDSHAKE);
			preauth_tok_init(s);
			progress = true;
		}
		if (s->state == SESS_CLOSING && conn_out_idle(&s->client)) {
			sess_free_later(s);
			return;
		}
		if (s->state == SESS_PROXYING) {
			if (s->backend_gone && (buf_is_empty(&s->bk->conn.in) || !progress)) {
				if (s->backend_bye)
					sess_close(s, "backend closed the session", NULL);
				else {
					STAT_INC(&s->w->stats, backend_lost);
					sess_close(s,
					           s->bk->conn.error ? s->bk->conn.errmsg
					                             : "backend lost",
					           "* BYE [UNAVAILABLE] Backend connection lost.");
				}
				continue;
			}
			if (s->client.eof && pump_client_finished(s, progress)) {
				sess_close(s, "client closed", NULL);
				continue;
			}
			if (s->px == PX_LOGOUT_WAIT && pump_quiet(s) && buf_is_empty(&s->local) &&
			    buf_is_empty(&s->bk->conn.in)) {
				pump_finish_logout(s);
				progress = true;
				continue;
			}
			if (s->draining && pump_quiet(s)) {
				if (s->bk_drain)
					sess_close(s, "backend drained", BYE_BACKEND_DRAINED);
				else
					sess_close(s, "shutdown", "* BYE Server shutting down.");
				continue;
			}
		} else if (s->client.eof && s->state != SESS_CLOSING && s->state != SESS_LOGIN &&
		           s->state != SESS_WAKING &&
		           ((s->state != SESS_PREAUTH && s->state != SESS_PARKED) ||
		            buf_is_empty(&s->client.in) || !progress)) {
			/* Commands completed before the EOF are answered first, and
			 * a login under way ends with its answer (SESS_LOGIN). */
			sess_close(s, "client closed", NULL);
			continue;
		}
	} while (progress && ++rounds < RUN_ROUNDS);
	moved = moved || progress;

	/* A client at EOF waits for its answers while they keep coming: each
	 * step forward restarts command_timeout (sess_timeout ends it). */
	if (moved && s->state == SESS_PROXYING && s->client.eof)
		sess_arm(s, s->bcfg->command_timeout);
	sess_update(s);
	/* Out of rounds with work left: come back after the other sessions. */
	if (progress && s->state != SESS_DEAD)
		sess_run_soon(s);
}

static void sess_client_io(struct conn *c, void *arg)
{
	(void)c;
	sess_run(arg);
}

void sess_backend_io(struct conn *c, void *arg)
{
	(void)c;
	sess_run(arg);
}

/* ---- accept, drain ------------------------------------------------------ */

static void peer_text(const struct sockaddr *sa, char *out, size_t outlen, char *ip, size_t iplen);

static uint16_t sa_port(const struct sockaddr *sa)
{
	if (sa->sa_family == AF_INET)
		return ntohs(((const struct sockaddr_in *)sa)->sin_port);
	if (sa->sa_family == AF_INET6)
		return ntohs(((const struct sockaddr_in6 *)sa)->sin6_port);
	return 0;
}

/* The local end of fd: s->lip, s->lport. */
static void sess_local_end(struct session *s, int fd)
{
	struct sockaddr_storage ss;
	socklen_t len = sizeof(ss);
	char text[sizeof(s->peer)];

	memset(&ss, 0, sizeof(ss));
	if (getsockname(fd, (struct sockaddr *)&ss, &len) < 0)
		ss.ss_family = AF_UNIX;
	peer_text((const struct sockaddr *)&ss, text, sizeof(text), s->lip, sizeof(s->lip));
	s->lport = sa_port((const struct sockaddr *)&ss);
}

static void peer_text(const struct sockaddr *sa, char *out, size_t outlen, char *ip, size_t iplen)
{
	char host[INET6_ADDRSTRLEN] = "?";
	unsigned port = 0;

	if (sa->sa_family == AF_INET) {
		const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
		inet_ntop(AF_INET, &in->sin_addr, host, sizeof(host));
		port = ntohs(in->sin_port);
		snprintf(out, outlen, "%s:%u", host, port);
	} else if (sa->sa_family == AF_INET6) {
		const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;
		inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof(host));
		port = ntohs(in6->sin6_port);
		snprintf(out, outlen, "[%s]:%u", host, port);
	} else {
		snprintf(out, outlen, "local");
	}
	snprintf(ip, iplen, "%s", sa->sa_family == AF_UNIX ? "local" : host);
}

/* A connection limit says no: one log line a second at most (a flood must
 * not flood the log too), a BYE where the client can read one. */
/* A PROXY header would come from a host not in proxy_trusted: closed, no
 * byte read (one log line a second at most, like the refusals below). */
static void sess_untrusted(struct session *s)
{
	static _Thread_local double logged_at;
	static _Thread_local unsigned quiet;
	double now = ev_now(s->w->loop);

	if (now - logged_at >= 1.0) {
		log_warn("S-%lu -@%s refused: not in [listen %s] proxy_trusted%s", s->id, s->peer,
		         s->lcfg->name, quiet ? " (and more in the last second)" : "");
		logged_at = now;
		quiet = 0;
	} else {
		quiet++;
	}
	sess_close(s, "not in proxy_trusted", NULL);
}

static void sess_refuse(struct session *s, const char *limit, unsigned max)
{
	static _Thread_local double logged_at;
	static _Thread_local unsigned quiet;
	double now = ev_now(s->w->loop);
	char why[96];

	snprintf(why, sizeof(why), "refused: %s (%u) reached", limit, max);
	if (now - logged_at >= 1.0) {
		log_warn("S-%lu -@%s %s%s", s->id, s->peer, why,
		         quiet ? " (and more refusals in the last second)" : "");
		logged_at = now;
		quiet = 0;
	} else {
		quiet++;
	}
	/* Without TLS yet on an implicit-TLS port nothing can be said. */
	if (s->lcfg->tls == CFG_TLS_IMPLICIT && !s->tls_active) {
		sess_close(s, why, NULL);
		return;
	}
	sess_to(s, SESS_PREAUTH); /* a state where the client can take a BYE */
	s->reason = NULL;
	sess_close(s, why,
	           strcmp(limit, "max_connections") == 0
	               ? "* BYE [UNAVAILABLE] Too many connections, try again later."
	               : "* BYE [UNAVAILABLE] Too many connections from your address.");
}

/* The client's address is final (after a PROXY header where one comes):
 * count it under max_connections_per_ip. false: refused and closing. */
static bool sess_admit_ip(struct session *s)
{
	unsigned max = s->rt->cfg->max_connections_per_ip;

	if (max == 0)
		return true;
	if (!admit_ip(s->ipkey, max)) {
		STAT_INC(&s->w->stats, refused_ip);
		sess_refuse(s, "max_connections_per_ip", max);
		return false;
	}
	s->ip_counted = true;
	return true;
}

/* The client's address is final: admit it, then TLS or the greeting. */
static void sess_begin(struct session *s)
{
	/* IPv6 clients are counted by prefix: one host has a whole /64. */
	if (ident_ip_group(s->ip, s->rt->cfg->ipv6_prefix, s->ipkey, sizeof(s->ipkey)) < 0)
		snprintf(s->ipkey, sizeof(s->ipkey), "%s", s->ip);
	if (!sess_admit_ip(s))
		return;
	if (s->lcfg->tls == CFG_TLS_IMPLICIT) {
		if (conn_start_tls(&s->client, s->rt->listen_ctx[s->lidx], true, NULL) < 0) {
			sess_close(s, "cannot start TLS", NULL);
			return;
		}
		sess_to(s, SESS_HANDSHAKE);
	} else {
		preauth_greet(s);
	}
}

/*
 * Read the PROXY header without taking a byte more (what follows may be a
 * TLS ClientHello, which the TLS layer must read from the socket itself):
 * peek, and take only bytes the parser has shown to be header. Returns 0
 * when the header is done and the session began, -2 to wait for more, -1
 * when the session is closing.
 */
static int sess_proxy_header(struct session *s)
{
	int fd = s->client.fd;
	size_t have = s->phdr_len, used = 0;
	struct proxyproto_result pr;
	const char *err = "invalid";
	ssize_t n = recv(fd, s->phdr + have, PROXYPROTO_MAX_HEADER - have, MSG_PEEK);

	if (n < 0) {
		if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
			return -2;
		sess_close(s, "read error before the PROXY header", NULL);
		return -1;
	}
	if (n == 0) {
		sess_close(s, "closed before the PROXY header", NULL);
		return -1;
	}
	int r = proxyproto_parse(s->phdr, have + (size_t)n, &pr, &used, &err);
	if (r == -1) {
		char why[96];
		snprintf(why, sizeof(why), "bad PROXY header: %s", err);
		sess_log(s, LOG_LVL_WARN, why);
		sess_close(s, why, NULL);
		return -1;
	}
	/* Every byte peeked is header while it is incomplete; once complete,
	 * exactly the rest of it. */
	size_t take = r == 0 ? used - have : (size_t)n;
	if (recv(fd, s->phdr + have, take, 0) != (ssize_t)take) {
		sess_close(s, "read error in the PROXY header", NULL);
		return -1;
	}
	s->phdr_len += take;
	if (r == -2)
		return -2;
	if (pr.command == PROXYPROTO_CMD_PROXY && (pr.family == AF_INET || pr.family == AF_INET6)) {
		char via[sizeof(s->peer)], what[192];
		memcpy(via, s->peer, sizeof(via));
		peer_text((const struct sockaddr *)&pr.src, s->peer, sizeof(s->peer), s->ip,
		          sizeof(s->ip));
		s->port = sa_port((const struct sockaddr *)&pr.src);
		char unused[sizeof(s->peer)];
		peer_text((const struct sockaddr *)&pr.dst, unused, sizeof(unused), s->lip,
		          sizeof(s->lip));
		s->lport = sa_port((const struct sockaddr *)&pr.dst);
		snprintf(what, sizeof(what), "PROXY v%d header: client %s via %s", pr.version,
		         s->peer, via);
		sess_log(s, LOG_LVL_DEBUG, what);
	}
	free(s->phdr);
	s->phdr = NULL;
	sess_begin(s);
	return 0;
}

void session_accept(struct worker *w, size_t lidx, int fd, const struct sockaddr *peer,
                    socklen_t peerlen)
{
	struct session *s = zalloc(sizeof(*s));

	(void)peerlen;
	if (s == NULL) {
		close(fd);
		return;
	}
	s->id = next_session_id();
	s->w = w;
	s->started = ev_now(w->loop);
	STAT_INC(&w->stats, conns_total);
	STAT_INC(&w->stats, sessions_active);
	s->rt = runtime_ref(w->rt);
	s->lidx = lidx;
	s->lcfg = &s->rt->cfg->listens[lidx];
	peer_text(peer, s->peer, sizeof(s->peer), s->ip, sizeof(s->ip));
	s->port = sa_port(peer);
	sess_local_end(s, fd);
	conn_init(&s->client, w->loop, fd, CLIENT_IN_SIZE, CLIENT_OUT_SIZE, sess_client_io, s);
	buf_init(&s->cmd, PREAUTH_MAX_CMD);
	buf_init(&s->local, LOCAL_SIZE);
	preauth_tok_init(s);
	imap_tok_init(&s->btok, IMAP_TOK_RESPONSES, NULL);
	ev_timer_init(&s->timer, sess_timeout, s->rt->cfg->preauth_timeout, 0.);
	s->timer.data = s;
	sess_link(s);
	log_debug("S-%lu -@%s connected on %s (worker %d)", s->id, s->peer, s->lcfg->name, w->id);

	unsigned maxc = admit_max_connections(s->rt->cfg->max_connections);
	if (!admit_conn(maxc)) {
		STAT_INC(&w->stats, refused_total);
		sess_refuse(s, "max_connections", maxc);
		sess_run(s);
		return;
	}
	s->conn_counted = true;
	ev_timer_start(w->loop, &s->timer);
	if (s->lcfg->proxy_protocol && s->lcfg->ntrusted > 0 &&
	    !cidr_list_match(s->lcfg->trusted, s->lcfg->ntrusted, peer)) {
		sess_untrusted(s);
		return;
	}
	if (s->lcfg->proxy_protocol) {
		s->phdr = malloc(PROXYPROTO_MAX_HEADER);
		if (s->phdr == NULL) {
			sess_close(s, "out of memory", NULL);
			return;
		}
		sess_to(s, SESS_PROXYHDR);
		s->client.want_input = true;
	} else {
		sess_begin(s);
	}
	sess_run(s);
}

void session_drain_all(struct worker *w, bool force)
{
	struct list_node *n, *tmp;

	/* sess_run may free s (it leaves the list), never another session. */
	list_for_each_safe (n, tmp, &w->sessions) {
		struct session *s = list_entry(n, struct session, node);
		if (s->state == SESS_CLOSING || s->state == SESS_DEAD)
			continue;
		s->draining = true;
		if (s->state != SESS_PROXYING || force || pump_quiet(s))
			sess_close(s, "shutdown", "* BYE Server shutting down.");
		sess_run(s);
	}
}

unsigned session_backend_drain(struct worker *w, const char *name)
{
	struct list_node *n, *tmp;
	unsigned count = 0;

	list_for_each_safe (n, tmp, &w->sessions) {
		struct session *s = list_entry(n, struct session, node);
		/* Only sessions on a backend, or parked on one: a session back
		 * in PREAUTH (UNAUTHENTICATE) may still name its last one, and a
		 * login under way is caught when it attaches (pump_attach). */
		if ((s->state != SESS_PROXYING && s->state != SESS_PARKED &&
		     s->state != SESS_WAKING) ||
		    s->bcfg == NULL || strcmp(s->bcfg->name, name) != 0)
			continue;
		s->draining = true;
		s->bk_drain = true;
		if (s->state != SESS_PROXYING || pump_quiet(s))
			sess_close(s, "backend drained", BYE_BACKEND_DRAINED);
		sess_run(s);
		count++;
	}
	return count;
}

void session_kick(struct worker *w, const char *user, size_t len)
{
	struct list_node *node, *tmp;
	unsigned n = 0;

	list_for_each_safe (node, tmp, &w->sessions) {
		struct session *s = list_entry(node, struct session, node);
		if (s->state == SESS_CLOSING || s->state == SESS_DEAD || s->uname_len != len ||
		    memcmp(s->uname, user, len) != 0)
			continue;
		/* In the middle of a response no BYE fits: close without one. */
		sess_close(s, "kicked",
		           "* BYE [UNAVAILABLE] Session terminated by the administrator.");
		sess_run(s);
		n++;
	}
	if (n > 0)
		log_info("worker %d: kicked %u session(s) of %.*s", w->id, n,
		         (int)(len > 64 ? 64 : len), user);
}

void session_stop_all(struct worker *w)
{
	struct list_node *n, *tmp;

	list_for_each_safe (n, tmp, &w->sessions) {
		struct session *s = list_entry(n, struct session, node);

		sess_close(s, "stopped", NULL); /* logs the end, drops the login */
		sess_free_later(s);             /* no flush: the loop is gone */
	}
}

/* ---- GET /sessions -------------------------------------------------------- */

/* The stable names /sessions and `imapmuxctl who` show (README "Control
 * tool"), fewer than the states: what an operator tells apart. */
static const char *sess_api_state(const struct session *s)
{
	switch (s->state) {
	case SESS_NEW:
	case SESS_PROXYHDR:
	case SESS_HANDSHAKE:
		return "connecting";
	case SESS_PREAUTH:
	case SESS_STARTTLS:
		return "preauth";
	case SESS_LOGIN:
		return "authenticating";
	case SESS_PROXYING:
		return "logged_in";
	case SESS_PARKED:
		return "parked";
	case SESS_WAKING:
		return "waking";
	case SESS_CLOSING:
	case SESS_DEAD:
		break;
	}
	return "closing";
}

static bool sess_logged_in(const struct session *s)
{
	return s->state == SESS_PROXYING || s->state == SESS_PARKED || s->state == SESS_WAKING;
}

void session_snapshot(struct worker *w, struct sessions_req *rq)
{
	uint8_t want[IDENT_USER_MAX];
	size_t wlen = 0;
	bool filter = sessions_req_filter(rq, want, &wlen);
	struct list_node *n;
	ev_tstamp now = ev_now(w->loop);

	/* The filter names the user as a kick would (username_case). */
	if (filter)
		ident_user_norm(want, wlen, w->rt->cfg->username_case == CFG_UCASE_FOLD, want);
	list_for_each (n, &w->sessions) {
		const struct session *s = list_entry(n, struct session, node);
		struct sessions_row r;
		bool in = sess_logged_in(s);

		if (s->state == SESS_DEAD)
			continue;
		if (filter && (!in || s->uname_len != wlen || memcmp(s->uname, want, wlen) != 0))
			continue;
		memset(&r, 0, sizeof(r));
		r.id = s->id;
		r.worker = w->id;
		snprintf(r.client, sizeof(r.client), "%s", s->peer);
		snprintf(r.listener, sizeof(r.listener), "%s", s->lcfg->name);
		snprintf(r.tls, sizeof(r.tls), "%s", sess_tls_version(s));
		r.state = sess_api_state(s);
		r.in_idle =
		    (s->state == SESS_PROXYING && (s->px == PX_IDLING || s->px == PX_PARK_DONE)) ||
		    park_idling(s);
		if (in) {
			r.user_len = s->uname_len;
			memcpy(r.user, s->uname, s->uname_len);
			if (s->bcfg != NULL)
				snprintf(r.backend, sizeof(r.backend), "%s", s->bcfg->name);
		}
		r.since = s->started;
		r.idle = now - (s->last_activity > s->started ? s->last_activity : s->started);
		if (sessions_req_add(rq, &r) < 0)
			break; /* full: the answer says truncated */
	}
}
