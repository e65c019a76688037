/*
 * imapbench: an IMAP load generator (libev + OpenSSL, one thread).
 *
 * The pieces, and who calls whom:
 *
 *   imapbench.c        options, the run's phases (warmup -> measured -> end),
 *                      the time limit, the JSON result, main()
 *   imapbench_modes.c  one script per mode (logins, latency, bulk, idle, mix):
 *                      what a loop sends next when a response completes
 *   imapbench_net.c    a connection: non-blocking connect, TLS (implicit or
 *                      STARTTLS), a line + literal reader, a write queue
 *   imapbench_proc.c   /proc: CPU of process trees, VmRSS, TCP connections
 *
 * A "loop" (struct ib_conn) is one of the -c concurrent actors. It keeps its
 * struct for the whole run; its socket and SSL come and go (the logins mode
 * reconnects for every operation). The connection layer calls the mode's
 * handlers with each response line; a mode never sees literal bytes, only
 * their announced and received counts.
 */
#ifndef IMAPBENCH_H
#define IMAPBENCH_H

#include <ev.h>
#include <openssl/ssl.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#define IB_MAX_PIDS   16
#define IB_RBUF_BULK  (128 * 1024) /* bulk mode: reads of 64 KB+; also the longest line */
#define IB_RBUF_SMALL (32 * 1024)  /* the other modes (many connections at once) */
#define IB_WBUF_SIZE  4096         /* one command line (the big literal is not copied) */
#define IB_ERR_SIZE   256

enum ib_tls { IB_TLS_IMPLICIT, IB_TLS_STARTTLS, IB_TLS_NONE };

enum ib_mode_id { IB_LOGINS, IB_LATENCY, IB_BULK, IB_IDLE, IB_MIX };

/* The run's phases. Every loop finishes its current operation before the
 * phase changes (a barrier), so an operation belongs to exactly one phase. */
enum ib_phase {
	IB_PH_WARMUP,  /* set-up and --warmup operations: not counted */
	IB_PH_MEASURE, /* counted; CPU and wall time measured around it */
	IB_PH_END,     /* LOGOUT and close; nothing counted */
};

/* Where a connection is. */
enum ib_net {
	IB_NET_CLOSED,     /* no socket */
	IB_NET_CONNECTING, /* non-blocking connect() in flight */
	IB_NET_HANDSHAKE,  /* SSL_connect() in progress */
	IB_NET_GREETING,   /* waiting for the server's first line */
	IB_NET_STARTTLS,   /* STARTTLS sent, waiting for its tagged OK */
	IB_NET_OPEN,       /* greeted (and TLS up): the mode's commands */
};

/* Tagged completion status. */
enum ib_status { IB_OK, IB_NO, IB_BAD, IB_OTHER };

/* Where a loop is in the run (bench_loop_set() is the one way to move it). */
enum ib_loop {
	IB_LOOP_RUNNING,  /* doing its operations (or setting up) */
	IB_LOOP_WAITING,  /* its share of this phase done: waits for the next phase */
	IB_LOOP_DEAD,     /* gave up after a failure (modes that do not reconnect) */
	IB_LOOP_FINISHED, /* logged out at the end: done for the run */
	IB_LOOP_COUNT
};

struct ib_conn;

/* A mode's handlers; every one may call conn_fail() or conn_close(). */
struct ib_mode {
	const char *name;
	int reconnects; /* after a failure the loop goes on with its next operation */
	unsigned default_n;
	/* A loop starts (and, reconnecting modes, starts every operation). */
	void (*start)(struct ib_conn *c);
	/* Greeted (and TLS up): the first command. */
	void (*ready)(struct ib_conn *c);
	/* An untagged line ("* ..."), without CRLF; when it announces a literal,
	 * c->lit_size is already its size. */
	void (*untagged)(struct ib_conn *c, const char *line, size_t len);
	/* A continuation request ("+ ..."). */
	void (*cont)(struct ib_conn *c, const char *line, size_t len);
	/* The tagged completion of the command in flight. */
	void (*tagged)(struct ib_conn *c, enum ib_status st, const char *line, size_t len);
	/* The phase changed while the loop was waiting for it. */
	void (*resume)(struct ib_conn *c);
};

/* Mix mode's commands (imaptest's default states, imapbench_modes.c). */
enum ib_mix_cmd {
	IB_MIX_LOGIN,
	IB_MIX_LIST,
	IB_MIX_STATUS,
	IB_MIX_SELECT,
	IB_MIX_FETCH,
	IB_MIX_FETCH2,
	IB_MIX_COPY,
	IB_MIX_STORE,
	IB_MIX_DELETE,
	IB_MIX_EXPUNGE,
	IB_MIX_APPEND,
	IB_MIX_LOGOUT,
	IB_MIX_COUNT
};

struct ib_conn {
	struct bench *b;
	unsigned idx; /* loop number: user idx % -U */
	char user[128];

	/* connection */
	enum ib_net net;
	int fd;
	SSL *ssl;
	SSL_SESSION *sess; /* --resume: the ticket / session of the previous login */
	ev_io io;
	ev_timer kick;      /* runs the next operation from the loop, not from a callback */
	int tls_want_write; /* OpenSSL needs the socket writable to go on */
	unsigned gen;       /* incremented on every close: a handler knows it closed */

	/* reading: lines, and literals counted but never kept */
	char *rbuf;
	size_t rlen, rcap;
	uint64_t lit_left;  /* literal bytes still to come */
	uint64_t lit_size;  /* announced size of the latest literal */
	uint64_t lit_got;   /* literal bytes received for the command in flight */
	unsigned lit_count; /* literals announced for the command in flight */
	int midline;        /* after a literal: the rest of the same response line */

	/* writing */
	char wbuf[IB_WBUF_SIZE];
	size_t wlen, woff;
	const char *big; /* a large payload sent after wbuf (not owned, not copied) */
	size_t big_len, big_off;

	/* the command in flight */
	char tag[16];
	unsigned tagno;
	int step;     /* the mode's step */
	double t_op;  /* operation start (CLOCK_MONOTONIC seconds) */
	double t_cmd; /* command sent */
	int op_phase; /* the phase the operation started in */
	int in_op;    /* an operation is under way */
	enum ib_loop loop_state;
	unsigned quota; /* latency: operations left in this phase */

	/* mode data */
	uint64_t exists;   /* messages in the selected mailbox (EXISTS - EXPUNGE) */
	uint64_t uid;      /* bulk fetch: the message; latency fetch: the UID */
	uint64_t uid_size; /* bulk fetch: its RFC822.SIZE */
	int literal_plus;  /* the server offers LITERAL+ */
	char bye[128];     /* the server's "* BYE" line, if it sent one */
	int idling;        /* idle: got "+ idling" */
	int mix_state;     /* mix: index into the state list */
	int mix_cmd;       /* mix: the command in flight */
	unsigned mix_appends;
};

struct ib_cpu {
	double s[IB_MAX_PIDS]; /* CPU seconds of each --pid tree */
};

struct bench {
	struct ev_loop *loop;
	const struct ib_mode *mode;
	enum ib_mode_id mode_id;

	/* options */
	const char *host;
	int port;
	enum ib_tls tls;
	const char *user_prefix, *user_suffix; /* -u split around its %d */
	int user_width, user_zero, user_has_d;
	char user_fmt[128];
	unsigned users;
	const char *password;
	const char *mailbox;
	unsigned concurrency;
	unsigned n;
	double time_limit;
	int pids[IB_MAX_PIDS];
	unsigned npids;
	const char *label;
	unsigned warmup;
	int resume;
	int cmd_fetch;   /* latency: --cmd fetch */
	int bulk_append; /* bulk: --append (else --fetch) */
	uint64_t append_bytes;
	uint64_t opt_uid; /* --uid */
	double settle, hold;
	int backend_port;
	const char *ca;
	unsigned seed;

	/* resources */
	struct sockaddr_storage addr;
	socklen_t addrlen;
	SSL_CTX *ctx;
	char *message; /* bulk --append / mix APPEND: the message */
	size_t message_len;
	char *mix_message;
	size_t mix_message_len;
	struct ib_conn *conns;

	/* the run */
	enum ib_phase phase;
	unsigned started;                 /* shared counter: operations begun in this phase */
	unsigned target;                  /* operations this phase */
	unsigned loops_in[IB_LOOP_COUNT]; /* how many loops are in each ib_loop */
	ev_idle advance;                  /* moves to the next phase outside any callback chain */
	ev_timer limit;                   /* -t */
	ev_timer idle_timer;              /* idle: settle, then hold */
	int idle_stage;
	int stopped_by_time;
	double t_start, t_end;
	struct ib_cpu cpu0, cpu1;
	int cpu_ok;

	/* results */
	uint64_t ops, errors, resumed, bytes, no_replies;
	char first_error[IB_ERR_SIZE];
	double *lat; /* µs, every sample of the measured phase */
	size_t nlat, lat_cap;
	uint64_t commands[IB_MIX_COUNT];
	long rss_kb[2][IB_MAX_PIDS], rss_tree_kb[2][IB_MAX_PIDS];
	long conns_to[2][IB_MAX_PIDS], conns_tree[2][IB_MAX_PIDS];
	int idle_sampled; /* samples taken: 0, 1 or 2 */
};

extern const struct ib_mode ib_mode_logins, ib_mode_latency, ib_mode_bulk, ib_mode_idle,
    ib_mode_mix;
extern const char *const ib_mix_names[IB_MIX_COUNT];
extern const char *const ib_mix_description;

/* ---- imapbench.c: the run ---- */
double ib_now(void);
/* Record an error (counted in every phase); the first one's text is kept. */
void bench_error(struct bench *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* May c begin an operation now? 1: yes (counted as begun, c->t_op set);
 * 0: no, c now waits for the phase to change (mode->resume is called then). */
int bench_op_begin(struct ib_conn *c);
/* c's operation completed (counted when it began in the measured phase). */
void bench_op_done(struct ib_conn *c);
/* Move loop c to state st. When every loop is waiting, dead or finished
 * (at the end: dead or finished), the run moves to its next phase, from the
 * event loop; waiting loops are then resumed (mode->resume). */
void bench_loop_set(struct ib_conn *c, enum ib_loop st);
void bench_lat_add(struct bench *b, double us);

/* ---- imapbench_net.c: a connection ---- */
/* Open the loop's connection; a failure goes through conn_fail(). */
void conn_connect(struct ib_conn *c);
/* Send "TAG <command>\r\n" (a new tag); the reply goes to mode->tagged. */
void conn_cmd(struct ib_conn *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Queue bytes as they are (a literal's end, DONE); len <= free space. */
void conn_raw(struct ib_conn *c, const char *p, size_t len);
/* Queue a large payload after the queued bytes; p must live until sent. */
void conn_big(struct ib_conn *c, const char *p, size_t len);
/* Close (SSL shutdown once, no waiting); the loop's struct stays. */
void conn_close(struct ib_conn *c);
/* Record an error for c's operation and close it; then the mode goes on
 * (reconnecting modes: the loop's next operation; others: the loop is gone). */
void conn_fail(struct ib_conn *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Run fn for c from the event loop soon (never inside the current callback). */
void conn_kick(struct ib_conn *c);
void conn_init(struct ib_conn *c, struct bench *b, unsigned idx);
void conn_destroy(struct ib_conn *c);
int net_setup(struct bench *b) __attribute__((warn_unused_result));

/* ---- imapbench_proc.c: /proc ---- */
/* CPU seconds (utime+stime+cutime+cstime) of pid and its live descendants;
 * -1 when pid is gone. */
double proc_tree_cpu(int pid);
long proc_rss_kb(int pid);
/* Sum of VmRSS over the tree (pages shared between processes count in each). */
long proc_tree_rss_kb(int pid);
/* ESTABLISHED TCP connections held by pid (tree: and its descendants) to
 * remote port `port` (IPv4 and IPv6). */
long proc_conns_to(int pid, int port, int tree);

#endif
