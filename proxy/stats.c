/*
 * stats — GET /metrics: the workers' counters in Prometheus text format,
 * and GET /status: the same counters as JSON for people and tools
 * (status.c), served by a tiny HTTP server on a thread and event loop of
 * its own.
 *
 *   stats_start (caller's thread)        stats thread (its own ev_loop)
 *     socket, bind, listen                 accept -> conn
 *     ev_loop_new, pthread_create  --->      READING -> WRITING -> LINGERING -> closed
 *                                            GET /metrics: metrics_render (metrics.c)
 *                                          READING -> GATHERING -> WRITING ...
 *                                            GET /sessions: the workers asked by message
 *                                            (sessions_api.c), sessions_done or deadline
 *   stats_stop: ev_async --------------->  ev_break
 *     join, then close and free what is left
 *
 * Invariants:
 *  - Of the workers, this thread reads the struct stats stats_start was
 *    given (through srv.counters, its own copy of the pointers: this file
 *    knows counters, not workers) and nothing else, and only with relaxed
 *    atomic loads: each worker is its counters' only writer, the counters
 *    are independent, and a scrape need not be a consistent snapshot
 *    across them. The caller keeps them in place until stats_stop.
 *    Sessions are never read from here: GET /sessions asks each worker
 *    for a copy of its own (sessions_api.h) and waits for the answers
 *    without blocking, at most SESSIONS_WAIT, at most STATS_MAX_GATHERS
 *    requests at once.
 *  - Everything a client controls is bounded: at most STATS_MAX_CONNS
 *    connections, a request head of at most STATS_HEAD_MAX bytes,
 *    STATS_CONN_TIMEOUT seconds from accept (from the request, once a
 *    GET /sessions has waited for the workers) to close, STATS_LINGER_MAX
 *    bytes discarded after the response. Nothing here blocks, and any byte
 *    sequence gets an answer or a close.
 *  - Idle clients cannot hold the slots: a connection accepted into a full
 *    table takes the slot of the one with the least claim to it (see
 *    conns_evict), and is read at once, so a request already sent is
 *    answered before later accepts can evict it. While more than half the
 *    slots are in use, a request head must be complete within
 *    STATS_BUSY_HEAD_TIMEOUT of the accept.
 *  - One request per connection; every response says Connection: close.
 *  - A connection is freed by conn_close, and every path that calls it
 *    returns at once without touching the connection again. Stopping a
 *    libev watcher forgets its pending events, so nothing fires for a
 *    freed connection.
 *  - The state in srv belongs to the stats thread while it runs, and to the
 *    caller of stats_start/stats_stop before and after it
 *    (pthread_create and pthread_join order those accesses).
 */
#include "stats.h"

#include <errno.h>
#include <ev.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "list.h"
#include "log.h"
#include "metrics.h"
#include "sessions_api.h"
#include "status.h"

#define STATS_MAX_CONNS         64
#define STATS_HEAD_MAX          4096
#define STATS_CONN_TIMEOUT      5.0
#define STATS_BUSY_HEAD_TIMEOUT 1.0
#define STATS_LINGER_MAX        65536
#define STATS_ACCEPT_BATCH      64
#define STATS_FULL_WARN_EVERY   60.0
#define STATS_MAX_GATHERS       4 /* GET /sessions being gathered at once */

enum conn_state {
	CONN_READING, /* reading the request head: no blank line yet, head_len <= STATS_HEAD_MAX */
	CONN_WRITING, /* the response is in out, out_off < out_len; the write watcher runs */
	CONN_LINGERING, /* response sent, SHUT_WR done: reading and dropping input until EOF */
	CONN_GATHERING, /* GET /sessions: the workers are asked (rq); no I/O watcher, the
	                 * deadline at gather_at + SESSIONS_WAIT (sessions_api.h) */
};

struct stats_conn {
	struct list_node node; /* on srv.conns from conn_new to conn_close */
	int fd;
	enum conn_state state; /* changed by conn_set_state only */
	ev_io io;              /* EV_READ while READING or LINGERING, EV_WRITE while WRITING */
	ev_timer deadline;     /* fires at deadline_at (see conn_arm) */
	double accepted;       /* ev_now at accept */
	double deadline_at;    /* ev_now time the deadline is set for */
	bool hurried;          /* READING while more than half the slots were in use */
	size_t head_len;       /* bytes in head */
	size_t line_start;     /* offset in head of the line not yet ended by '\n' */
	size_t discarded;      /* bytes dropped while LINGERING */
	char *out;             /* the response (malloc'd) while WRITING */
	size_t out_len, out_off;
	struct sessions_req *rq; /* while GATHERING */
	double gather_at;        /* ev_now when the workers were asked */
	char head[STATS_HEAD_MAX];
};

static struct {
	bool running;
	int fd; /* the listening socket */
	struct ev_loop *loop;
	pthread_t thread;
	ev_io accept_io;
	ev_timer accept_pause; /* out of fds: stop accepting for a moment */
	ev_async stop;
	const struct stats **counters; /* malloc'd copy of stats_start's pointers, one per worker */
	unsigned ncounters;
	struct list_node conns; /* every open stats_conn (node), newest first */
	unsigned nconns;        /* length of conns */
	unsigned long evicted;  /* connections closed to make room, since the last warning */
	double start_time;      /* wall clock at stats_start, seconds since the epoch */
	double last_full_warn;  /* ev_now of the last "all slots in use" warning */
	ev_async sessions_done; /* a GET /sessions has all its workers' answers */
	unsigned ngathering;    /* connections GATHERING */
} srv = {.fd = -1};

/* What a 200 answers with. */
enum route {
	ROUTE_METRICS, /* GET /metrics: Prometheus text (metrics.c) */
	ROUTE_STATUS,  /* GET /status: JSON (status.c) */
	ROUTE_PAGE,    /* GET /: the HTML page that shows /status (status.c) */
	ROUTE_HEALTH,  /* GET /health: 200 "ok" while logins are taken, 503 draining */
	ROUTE_WHO,     /* GET /sessions[?user=NAME]: JSON, asked of the workers (sessions_api.c) */
};

static void conn_gather(struct stats_conn *c, size_t len);
static void conn_sessions_answer(struct stats_conn *c);

/* Set once by SIGTERM's drain (main thread), read by the stats thread. */
static _Atomic bool draining;

void stats_set_draining(void)
{
	atomic_store_explicit(&draining, true, memory_order_relaxed);
}

/* ------------------------------------------------------------------------
 * HTTP request head
 */

/* RFC 9110 tchar: what a method or a header field name is made of. */
static bool is_tchar(unsigned char ch)
{
	if ((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9'))
		return true;
	return ch != '\0' && strchr("!#$%&'*+-.^_`|~", ch) != NULL;
}

/* A visible ASCII byte: what a request target is made of. */
static bool is_vchar(unsigned char ch)
{
	return ch > 0x20 && ch < 0x7f;
}

/* Line [p, eol) without a final '\r'. */
static const unsigned char *line_end(const unsigned char *p, const unsigned char *eol)
{
	return eol > p && eol[-1] == '\r' ? eol - 1 : eol;
}

/*
 * Header fields from p up to and including the blank line: "name: value"
 * with a token name and no control bytes but HTAB in the value. Obsolete
 * line folding is refused (RFC 9112 allows that), as are bare CRs.
 */
static int headers_check(const unsigned char *p, const unsigned char *end)
{
	while (p < end) {
		const unsigned char *eol = memchr(p, '\n', (size_t)(end - p));
		const unsigned char *le, *q;

		if (eol == NULL)
			return -1;
		le = line_end(p, eol);
		if (le == p)
			return 0;
		for (q = p; q < le && is_tchar(*q); q++)
			;
		if (q == p || q == le || *q != ':')
			return -1;
		for (q++; q < le; q++) {
			if ((*q < 0x20 && *q != '\t') || *q == 0x7f)
				return -1;
		}
		p = eol + 1;
	}
	return -1;
}

/*
 * The path of a request target: origin-form "/path?query", or absolute-form
 * "http://host/path?query" (which HTTP/1.1 servers must accept). Returns
 * 0 with [*path_r, *path_end_r), or -1 for any other form.
 */
static int target_path(const unsigned char *t, const unsigned char *t_end,
                       const unsigned char **path_r, const unsigned char **path_end_r)
{
	const unsigned char *p = t;

	if ((size_t)(t_end - t) >= 7 && strncasecmp((const char *)t, "http://", 7) == 0) {
		for (p = t + 7; p < t_end && *p != '/' && *p != '?'; p++)
			;
	} else if (t == t_end || *t != '/') {
		return -1;
	}
	*path_r = p;
	while (p < t_end && *p != '?')
		p++;
	*path_end_r = p;
	return 0;
}

/*
 * The status to answer a complete request head [head, head + len) with,
 * the blank line included: 200 for GET /metrics, /status or / (which in
 * *route_r), 404 for other paths, 405 for other methods, 400 when it is not
 * a well-formed HTTP/1.x head.
 */
static int request_status(const char *head, size_t len, enum route *route_r)
{
	const unsigned char *p = (const unsigned char *)head, *end = p + len;
	const unsigned char *eol = memchr(p, '\n', len), *le;
	const unsigned char *m, *m_end, *t, *t_end, *path, *path_end;

	if (eol == NULL)
		return 400;
	le = line_end(p, eol);

	/* method SP request-target SP HTTP/1.x, nothing more */
	for (m = p; p < le && is_tchar(*p); p++)
		;
	m_end = p;
	if (m_end == m || p == le || *p != ' ')
		return 400;
	for (t = ++p; p < le && is_vchar(*p); p++)
		;
	t_end = p;
	if (t_end == t || p == le || *p != ' ')
		return 400;
	p++;
	if (le - p != 8 || memcmp(p, "HTTP/1.", 7) != 0 || p[7] < '0' || p[7] > '9')
		return 400;
	if (headers_check(eol + 1, end) < 0)
		return 400;
	if (target_path(t, t_end, &path, &path_end) < 0)
		return 400;

	if (m_end - m != 3 || memcmp(m, "GET", 3) != 0)
		return 405;
	if (path_end - path == 8 && memcmp(path, "/metrics", 8) == 0) {
		*route_r = ROUTE_METRICS;
		return 200;
	}
	if (path_end - path == 1 && *path == '/') {
		*route_r = ROUTE_PAGE;
		return 200;
	}
	if (path_end - path == 7 && memcmp(path, "/health", 7) == 0) {
		*route_r = ROUTE_HEALTH;
		return atomic_load_explicit(&draining, memory_order_relaxed) ? 503 : 200;
	}
	if (path_end - path == 7 && memcmp(path, "/status", 7) == 0) {
		*route_r = ROUTE_STATUS;
		return 200;
	}
	if (path_end - path == 9 && memcmp(path, "/sessions", 9) == 0) {
		*route_r = ROUTE_WHO;
		return 200;
	}
	return 404;
}

/* ------------------------------------------------------------------------
 * connections
 */

static void conn_close(struct stats_conn *c)
{
	if (c->rq != NULL) {
		sessions_req_release(&c->rq);
		srv.ngathering--;
	}
	ev_io_stop(srv.loop, &c->io);
	ev_timer_stop(srv.loop, &c->deadline);
	close(c->fd);
	list_remove(&c->node);
	srv.nconns--;
	free(c->out);
	free(c);
}

/*
 * Set c's deadline from its state: STATS_BUSY_HEAD_TIMEOUT after the accept
 * for a hurried connection still reading its head, STATS_CONN_TIMEOUT after
 * it otherwise. A deadline already past fires at the next loop iteration
 * (not here: the caller may be walking srv.conns).
 */
static void conn_arm(struct stats_conn *c)
{
	/* A GET /sessions that waited for the workers still gets its full
	 * time to be sent. */
	double at = (c->gather_at > c->accepted ? c->gather_at : c->accepted) + STATS_CONN_TIMEOUT;
	double left;

	if (c->state == CONN_READING && c->hurried)
		at = c->accepted + STATS_BUSY_HEAD_TIMEOUT;
	else if (c->state == CONN_GATHERING)
		at = c->gather_at + SESSIONS_WAIT;
	if (at == c->deadline_at && ev_is_active(&c->deadline))
		return;
	c->deadline_at = at;
	left = at - ev_now(srv.loop);
	ev_timer_stop(srv.loop, &c->deadline);
	ev_timer_set(&c->deadline, left > 0. ? left : 0., 0.);
	ev_timer_start(srv.loop, &c->deadline);
}

/* The one way c changes state: its watcher and deadline follow. */
static void conn_set_state(struct stats_conn *c, enum conn_state state)
{
	c->state = state;
	ev_io_stop(srv.loop, &c->io);
	ev_io_set(&c->io, c->fd, state == CONN_WRITING ? EV_WRITE : EV_READ);
	if (state != CONN_GATHERING)
		ev_io_start(srv.loop, &c->io);
	conn_arm(c);
}

/*
 * Drop what the client still sends after the response, until it closes.
 * Closing with unread bytes in the socket would make the kernel send an
 * RST, which can destroy the response before the client has read it.
 */
static void conn_linger(struct stats_conn *c)
{
	char sink[4096];

	for (;;) {
		ssize_t n = recv(c->fd, sink, sizeof(sink), 0);

		if (n > 0) {
			c->discarded += (size_t)n;
			if (c->discarded > STATS_LINGER_MAX)
				break;
			continue;
		}
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
			return;
		break; /* EOF or error */
	}
	conn_close(c);
}

static void conn_write(struct stats_conn *c)
{
	while (c->out_off < c->out_len) {
		ssize_t n = send(c->fd, c->out + c->out_off, c->out_len - c->out_off, MSG_NOSIGNAL);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN || errno == EWOULDBLOCK) {
				if (c->state != CONN_WRITING)
					conn_set_state(c, CONN_WRITING);
				return;
			}
			conn_close(c);
			return;
		}
		c->out_off += (size_t)n;
	}
	free(c->out);
	c->out = NULL;
	if (shutdown(c->fd, SHUT_WR) < 0) {
		conn_close(c);
		return;
	}
	conn_set_state(c, CONN_LINGERING);
}

static const char *status_reason(int status)
{
	switch (status) {
	case 200:
		return "OK";
	case 400:
		return "Bad Request";
	case 404:
		return "Not Found";
	case 405:
		return "Method Not Allowed";
	case 431:
		return "Request Header Fields Too Large";
	case 503:
		return "Service Unavailable (draining)";
	default:
		return "Internal Server Error";
	}
}

/* Build the response for status (and route, for a 200) and start sending
 * it (may free c). */
static void conn_respond(struct stats_conn *c, int status, enum route route)
{
	struct text body, out;
	const char *ctype = "text/plain; charset=utf-8";

	text_init(&body, status == 200 ? 4096 : 64);
	if (status == 200) {
		if (route == ROUTE_HEALTH) {
			text_printf(&body, "ok\n");
		} else if (route == ROUTE_PAGE) {
			ctype = "text/html; charset=utf-8";
			text_append(&body, status_page_html, strlen(status_page_html));
		} else if (route == ROUTE_STATUS) {
			ctype = "application/json";
			status_render(&body, srv.counters, srv.ncounters, srv.start_time);
		} else {
			ctype = "text/plain; version=0.0.4";
			metrics_render(&body, srv.counters, srv.ncounters, srv.start_time);
		}
		if (body.failed) {
			log_error("stats: out of memory rendering %s",
			          route == ROUTE_STATUS ? "/status" : "/metrics");
			status = 500;
			free(body.p);
			text_init(&body, 64);
		}
	}
	if (status != 200)
		text_printf(&body, "%s\n", status_reason(status));

	text_init(&out, body.len + 256);
	text_printf(&out,
	            "HTTP/1.0 %d %s\r\n"
	            "Content-Type: %s\r\n"
	            "Content-Length: %zu\r\n"
	            "%s"
	            "Connection: close\r\n"
	            "\r\n",
	            status, status_reason(status), ctype, body.len,
	            status == 405 ? "Allow: GET\r\n" : "");
	if (!body.failed)
		text_append(&out, body.p, body.len);
	free(body.p);
	if (body.failed || out.failed) {
		free(out.p);
		conn_close(c);
		return;
	}
	log_debug("stats: request answered %d", status);
	c->out = out.p;
	c->out_len = out.len;
	c->out_off = 0;
	/* Most responses fit the socket buffer: try now, watch only if not. */
	conn_write(c);
}

/*
 * Read into head until a blank line ends it, then answer. A head that
 * fills the buffer gets 431; a client that closes early gets nothing.
 */
static void conn_read(struct stats_conn *c)
{
	for (;;) {
		size_t room = sizeof(c->head) - c->head_len;
		ssize_t n;

		if (room == 0) {
			conn_respond(c, 431, ROUTE_METRICS);
			return;
		}
		n = recv(c->fd, c->head + c->head_len, room, 0);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN || errno == EWOULDBLOCK)
				return;
			conn_close(c);
			return;
		}
		if (n == 0) {
			conn_close(c);
			return;
		}
		/* Scan only the new bytes: a slow client costs O(n) in total. */
		for (size_t i = c->head_len; i < c->head_len + (size_t)n; i++) {
			size_t start = c->line_start;

			if (c->head[i] != '\n')
				continue;
			if (i == start || (i == start + 1 && c->head[start] == '\r')) {
				enum route route = ROUTE_METRICS;
				int status = request_status(c->head, i + 1, &route);

				if (status == 200 && route == ROUTE_WHO)
					conn_gather(c, i + 1);
				else
					conn_respond(c, status, route);
				return;
			}
			c->line_start = i + 1;
		}
		c->head_len += (size_t)n;
	}
}

static void conn_io_cb(struct ev_loop *loop, ev_io *io, int revents)
{
	struct stats_conn *c = io->data;

	(void)loop;
	(void)revents;
	switch (c->state) {
	case CONN_READING:
		conn_read(c);
		break;
	case CONN_WRITING:
		conn_write(c);
		break;
	case CONN_LINGERING:
		conn_linger(c);
		break;
	case CONN_GATHERING:
		break; /* no I/O watcher in this state */
	}
}

static void conn_deadline_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
	struct stats_conn *c = t->data;

	(void)loop;
	(void)revents;
	if (c->state == CONN_GATHERING) {
		/* Answer with the workers that did: the rest are named in it. */
		log_warn("stats: GET /sessions: a worker did not answer within %.0fs",
		         SESSIONS_WAIT);
		conn_sessions_answer(c);
		return;
	}
	log_debug("stats: connection timed out (%s)",
	          c->state != CONN_READING ? "response not taken"
	          : c->hurried             ? "no request head within the busy deadline"
	                                   : "no request head");
	conn_close(c);
}

/*
 * More than half the slots in use: every connection still reading its head
 * (the new one included) must now complete it within STATS_BUSY_HEAD_TIMEOUT
 * of its accept. A deadline only moves earlier this way, never back while
 * the head is incomplete. O(STATS_MAX_CONNS) per accept while busy.
 */
static void conns_hurry(void)
{
	struct list_node *n;

	list_for_each (n, &srv.conns) {
		struct stats_conn *c = list_entry(n, struct stats_conn, node);

		if (c->state == CONN_READING && !c->hurried) {
			c->hurried = true;
			conn_arm(c);
		}
	}
}

/* Which connections go first when a slot is needed: lower goes first. */
static int conn_evict_rank(const struct stats_conn *c)
{
	switch (c->state) {
	case CONN_READING:
		return 0; /* no complete request yet: idle, slow, or a trickle */
	case CONN_LINGERING:
		return 1; /* answered: only waiting for the client's close */
	case CONN_WRITING:
		return 2; /* the response is under way, to a client slow to read it */
	case CONN_GATHERING:
		return 2; /* a whole request, being answered */
	}
	return 2;
}

static const char *conn_state_name(enum conn_state state)
{
	switch (state) {
	case CONN_READING:
		return "reading";
	case CONN_WRITING:
		return "writing";
	case CONN_LINGERING:
		return "lingering";
	case CONN_GATHERING:
		return "gathering";
	}
	return "?";
}

/*
 * Close one connection of a non-empty table to make room for a new one:
 * the oldest of the lowest conn_evict_rank, so that a client which has not
 * sent a whole request head goes before one being answered, and the one
 * that has taken longest goes first. Returns the state it was in.
 */
static enum conn_state conns_evict(void)
{
	struct stats_conn *victim = NULL;
	struct list_node *n;
	enum conn_state state;

	/* srv.conns is newest first: the last one of a rank is its oldest. */
	list_for_each (n, &srv.conns) {
		struct stats_conn *c = list_entry(n, struct stats_conn, node);

		if (victim == NULL || conn_evict_rank(c) <= conn_evict_rank(victim))
			victim = c;
	}
	state = victim->state;
	conn_close(victim);
	return state;
}

/* A connection for fd (owned from now on, closed on failure); NULL if out of memory. */
static struct stats_conn *conn_new(int fd)
{
	struct stats_conn *c = calloc(1, sizeof(*c));

	if (c == NULL) {
		close(fd);
		return NULL;
	}
	c->fd = fd;
	c->state = CONN_READING;
	c->accepted = ev_now(srv.loop);
	ev_io_init(&c->io, conn_io_cb, fd, EV_READ);
	c->io.data = c;
	ev_timer_init(&c->deadline, conn_deadline_cb, 0., 0.); /* set by conn_arm */
	c->deadline.data = c;
	list_push_front(&srv.conns, &c->node);
	srv.nconns++;
	ev_io_start(srv.loop, &c->io);
	conn_arm(c);
	if (srv.nconns > STATS_MAX_CONNS / 2)
		conns_hurry();
	return c;
}

/* ------------------------------------------------------------------------
 * GET /sessions: asked of the workers, answered when all have (or at the
 * deadline, naming those that have not)
 */

/* Send status with body (taken: freed here) as ctype; reason for the
 * status line. May free c. */
static void conn_respond_text(struct stats_conn *c, int status, const char *reason,
                              const char *ctype, struct text *body)
{
	struct text out;

	text_init(&out, body->len + 256);
	text_printf(&out,
	            "HTTP/1.0 %d %s\r\n"
	            "Content-Type: %s\r\n"
	            "Content-Length: %zu\r\n"
	            "Connection: close\r\n"
	            "\r\n",
	            status, reason, ctype, body->len);
	text_append(&out, body->p, body->len);
	free(body->p);
	body->p = NULL;
	if (body->failed || out.failed) {
		log_error("stats: out of memory answering /sessions");
		free(out.p);
		conn_close(c);
		return;
	}
	log_debug("stats: request answered %d", status);
	c->out = out.p;
	c->out_len = out.len;
	c->out_off = 0;
	conn_write(c);
}

static void conn_respond_plain(struct stats_conn *c, int status, const char *reason,
                               const char *line)
{
	struct text body;

	text_init(&body, 256);
	text_printf(&body, "%s\n", line);
	conn_respond_text(c, status, reason, "text/plain; charset=utf-8", &body);
}

/* The workers' rows so far, as the answer (may free c). */
static void conn_sessions_answer(struct stats_conn *c)
{
	struct text body;

	text_init(&body, 4096);
	sessions_render(&body, c->rq, srv.start_time);
	sessions_req_release(&c->rq);
	srv.ngathering--;
	conn_respond_text(c, 200, "OK", "application/json", &body);
}

/* From a worker's thread, under the request's lock: only a signal. */
static void sessions_notify(void *arg)
{
	(void)arg;
	ev_async_send(srv.loop, &srv.sessions_done);
}

static void sessions_done_cb(struct ev_loop *loop, ev_async *a, int revents)
{
	struct list_node *n, *tmp;

	(void)loop;
	(void)a;
	(void)revents;
	/* conn_sessions_answer may free c, and no other connection. */
	list_for_each_safe (n, tmp, &srv.conns) {
		struct stats_conn *c = list_entry(n, struct stats_conn, node);

		if (c->state == CONN_GATHERING && sessions_req_complete(c->rq))
			conn_sessions_answer(c);
	}
}

/* The query of the request line's target in head[0..len) (NULL, 0: none).
 * request_status has found the line well-formed: "METHOD SP target SP ...". */
static void request_query(const char *head, size_t len, const char **q_r, size_t *len_r)
{
	const char *sp = memchr(head, ' ', len);
	const char *t = sp + 1, *end = memchr(t, ' ', len - (size_t)(t - head));
	const char *qm = memchr(t, '?', (size_t)(end - t));

	*q_r = qm != NULL ? qm + 1 : NULL;
	*len_r = qm != NULL ? (size_t)(end - qm - 1) : 0;
}

/* GET /sessions, its head c->head[0..len): check the query, ask every
 * worker, wait (may free c). */
static void conn_gather(struct stats_conn *c, size_t len)
{
	uint8_t user[IDENT_USER_MAX];
	size_t ulen = 0, qlen;
	bool has_user = false;
	const char *q;
	char err[160];

	request_query(c->head, len, &q, &qlen);
	if (sessions_query_parse(q, qlen, user, &ulen, &has_user, err, sizeof(err)) < 0) {
		conn_respond_plain(c, 400, "Bad Request", err);
		return;
	}
	if (srv.ngathering >= STATS_MAX_GATHERS) {
		conn_respond_plain(c, 503, "Service Unavailable",
		                   "too many GET /sessions at once; try again");
		return;
	}
	c->rq = sessions_req_new(SESSIONS_MAX, user, ulen, has_user, sessions_notify, NULL);
	if (c->rq == NULL) {
		conn_respond_plain(c, 500, "Internal Server Error", "out of memory");
		return;
	}
	srv.ngathering++;
	c->gather_at = ev_now(srv.loop);
	conn_set_state(c, CONN_GATHERING);
	sessions_req_post(c->rq);
	if (sessions_req_complete(c->rq)) /* no workers to ask */
		conn_sessions_answer(c);
}

/* ------------------------------------------------------------------------
 * the listener and the thread
 */

static void accept_pause_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
	(void)t;
	(void)revents;
	ev_io_start(loop, &srv.accept_io);
}

static void accept_cb(struct ev_loop *loop, ev_io *io, int revents)
{
	struct stats_conn *c;

	(void)io;
	(void)revents;
	/* A bounded batch, so that a flood cannot starve the connections. */
	for (int i = 0; i < STATS_ACCEPT_BATCH; i++) {
		int fd = accept4(srv.fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);

		if (fd < 0) {
			if (errno == EINTR || errno == ECONNABORTED)
				continue;
			if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS ||
			    errno == ENOMEM) {
				/* The listener stays readable: pause it, or we spin. */
				log_error("stats: accept: %s; pausing accepts for 1s",
				          strerror(errno));
				ev_io_stop(loop, &srv.accept_io);
				ev_timer_stop(loop, &srv.accept_pause);
				ev_timer_set(&srv.accept_pause, 1., 0.);
				ev_timer_start(loop, &srv.accept_pause);
			}
			return;
		}
		if (srv.nconns >= STATS_MAX_CONNS) {
			enum conn_state state = conns_evict();

			srv.evicted++;
			if (ev_now(loop) - srv.last_full_warn >= STATS_FULL_WARN_EVERY) {
				srv.last_full_warn = ev_now(loop);
				log_warn(
				    "stats: all %d connections in use: closed the oldest %s one "
				    "to make room (%lu evicted since the last such warning)",
				    STATS_MAX_CONNS, conn_state_name(state), srv.evicted);
				srv.evicted = 0;
			}
		}
		c = conn_new(fd);
		if (c == NULL) {
			log_error("stats: out of memory for a connection");
			continue;
		}
		/*
		 * The request is often in already: answer it now, before later
		 * accepts of this batch can take its slot (may free c).
		 */
		conn_read(c);
	}
}

static void stop_cb(struct ev_loop *loop, ev_async *a, int revents)
{
	(void)a;
	(void)revents;
	ev_break(loop, EVBREAK_ALL);
}

static void *stats_thread(void *arg)
{
	(void)arg;
	ev_run(srv.loop, 0);
	return NULL;
}

int stats_bind(const struct cfg_addr *addr)
{
	int family = addr->ss.ss_family;
	int one = 1;

	if (srv.running || srv.fd >= 0) {
		log_error("stats: already started");
		return -1;
	}
	if (family != AF_INET && family != AF_INET6) {
		log_error("cannot listen on %s (stats_listen): not an IP address", addr->text);
		return -1;
	}
	srv.fd = socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (srv.fd < 0 || setsockopt(srv.fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
	    /* As for the IMAP listeners: [::] means IPv6 only. */
	    (family == AF_INET6 &&
	     setsockopt(srv.fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one)) < 0) ||
	    bind(srv.fd, (const struct sockaddr *)&addr->ss, addr->len) < 0 ||
	    listen(srv.fd, 128) < 0) {
		log_error("cannot listen on %s (stats_listen): %s", addr->text, strerror(errno));
		if (srv.fd >= 0)
			close(srv.fd);
		srv.fd = -1;
		return -1;
	}
	return 0;
}

int stats_start(const struct cfg_addr *addr, const struct stats *const *counters, unsigned n)
{
	const char *why = NULL;
	char why_buf[128];
	struct timespec now;
	int err;

	if (srv.running) {
		log_error("stats: already started");
		return -1;
	}
	if (srv.fd < 0 && stats_bind(addr) < 0)
		return -1;

	srv.loop = ev_loop_new(EVFLAG_AUTO | EVFLAG_NOSIGMASK);
	if (srv.loop == NULL) {
		why = "cannot create an event loop";
		goto fail;
	}
	if (n > 0) {
		srv.counters = calloc(n, sizeof(*srv.counters));
		if (srv.counters == NULL) {
			why = "out of memory";
			goto fail;
		}
		memcpy(srv.counters, counters, n * sizeof(*srv.counters));
	}
	srv.ncounters = n;
	list_init(&srv.conns);
	srv.nconns = 0;
	srv.evicted = 0;
	srv.last_full_warn = -STATS_FULL_WARN_EVERY;
	clock_gettime(CLOCK_REALTIME, &now);
	srv.start_time = (double)now.tv_sec + (double)now.tv_nsec / 1e9;

	ev_io_init(&srv.accept_io, accept_cb, srv.fd, EV_READ);
	ev_io_start(srv.loop, &srv.accept_io);
	ev_timer_init(&srv.accept_pause, accept_pause_cb, 1., 0.);
	ev_async_init(&srv.stop, stop_cb);
	ev_async_start(srv.loop, &srv.stop);
	ev_async_init(&srv.sessions_done, sessions_done_cb);
	ev_async_start(srv.loop, &srv.sessions_done);
	srv.ngathering = 0;

	err = pthread_create(&srv.thread, NULL, stats_thread, NULL);
	if (err != 0) {
		snprintf(why_buf, sizeof(why_buf), "cannot start a thread: %s", strerror(err));
		why = why_buf;
		goto fail;
	}
	srv.running = true;
	log_info("stats: serving /metrics and /status on %s", addr->text);
	return 0;

fail:
	log_error("cannot listen on %s (stats_listen): %s", addr->text, why);
	free(srv.counters);
	srv.counters = NULL;
	srv.ncounters = 0;
	if (srv.loop != NULL)
		ev_loop_destroy(srv.loop);
	srv.loop = NULL;
	if (srv.fd >= 0)
		close(srv.fd);
	srv.fd = -1;
	return -1;
}

void stats_stop(void)
{
	if (!srv.running) {
		if (srv.fd >= 0) /* bound, never started */
			close(srv.fd);
		srv.fd = -1;
		return;
	}
	ev_async_send(srv.loop, &srv.stop);
	pthread_join(srv.thread, NULL);

	/* The loop's thread is gone: its watchers are ours to stop now. */
	while (!list_empty(&srv.conns))
		conn_close(list_first_entry(&srv.conns, struct stats_conn, node));
	ev_io_stop(srv.loop, &srv.accept_io);
	ev_timer_stop(srv.loop, &srv.accept_pause);
	ev_async_stop(srv.loop, &srv.stop);
	ev_async_stop(srv.loop, &srv.sessions_done);
	ev_loop_destroy(srv.loop);
	srv.loop = NULL;
	close(srv.fd);
	srv.fd = -1;
	free(srv.counters);
	srv.counters = NULL;
	srv.ncounters = 0;
	srv.running = false;
}
