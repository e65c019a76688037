/*
 * imapbench: an IMAP load generator in C, for side-by-side benchmarks
 * (bench/versus.py runs it against Dovecot, nginx's mail proxy, imapmux).
 *
 *   bench/imapbench MODE [options]     (usage() below; BENCHMARKS.md
 *                                       describes the options and the JSON)
 *
 * One libev loop, -c loops (struct ib_conn) each a small state machine
 * (imapbench_modes.c) over a non-blocking connection (imapbench_net.c).
 * The run:
 *
 *   WARMUP: each loop sets up (latency/bulk: connect, LOGIN, SELECT) and
 *           does its share of --warmup operations, then waits
 *   (barrier: every loop waiting or gone) -> CPU of the --pid trees read
 *   MEASURE: -n operations; every one timed (CLOCK_MONOTONIC), every
 *           sample kept, percentiles from the sorted samples
 *   (barrier) -> CPU read again
 *   END:    loops still connected LOGOUT and close; then the JSON result.
 *
 * The -t timer stops everything wherever it is (stopped_by_time), so every
 * run ends by itself; every loop is bounded by -n operations.
 * Exit: 0 no error, 1 an operation failed (or nothing completed before -t),
 * 2 usage.
 */
#include <errno.h>
#include <getopt.h>
#include <netdb.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "imapbench.h"

double ib_now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

void bench_error(struct bench *b, const char *fmt, ...)
{
	char msg[IB_ERR_SIZE];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	b->errors++;
	if (b->errors == 1)
		snprintf(b->first_error, sizeof(b->first_error), "%s", msg);
	if (b->errors <= 10)
		fprintf(stderr, "imapbench: error: %s\n", msg);
}

void bench_lat_add(struct bench *b, double us)
{
	if (b->nlat == b->lat_cap) {
		size_t cap = b->lat_cap ? b->lat_cap * 2 : 4096;
		double *v = realloc(b->lat, cap * sizeof(*v));
		if (v == NULL)
			return;
		b->lat = v;
		b->lat_cap = cap;
	}
	b->lat[b->nlat++] = us;
}

static void cpu_sample(struct bench *b, struct ib_cpu *out)
{
	for (unsigned i = 0; i < b->npids; i++) {
		out->s[i] = proc_tree_cpu(b->pids[i]);
		if (out->s[i] < 0) {
			bench_error(b, "--pid %d: the process is gone", b->pids[i]);
			b->cpu_ok = 0;
		}
	}
}

int bench_op_begin(struct ib_conn *c)
{
	struct bench *b = c->b;
	if (b->phase == IB_PH_END)
		return 0;
	int ok;
	if (b->mode_id == IB_LATENCY) {
		ok = c->quota > 0;
		if (ok)
			c->quota--;
	} else {
		ok = b->started < b->target;
		if (ok)
			b->started++;
	}
	if (!ok) {
		bench_loop_set(c, IB_LOOP_WAITING);
		return 0;
	}
	c->in_op = 1;
	c->op_phase = b->phase;
	c->t_op = ib_now();
	return 1;
}

void bench_op_done(struct ib_conn *c)
{
	struct bench *b = c->b;
	c->in_op = 0;
	if (c->op_phase == IB_PH_MEASURE && b->phase == IB_PH_MEASURE) {
		b->ops++;
		bench_lat_add(b, (ib_now() - c->t_op) * 1e6);
	}
}

/* Every loop waiting, dead or finished? Then the phase moves on, from an
 * idle watcher (the loops are resumed outside their own callbacks). */
static void check_barrier(struct bench *b)
{
	unsigned n = b->loops_in[IB_LOOP_DEAD] + b->loops_in[IB_LOOP_FINISHED];
	if (b->phase != IB_PH_END)
		n += b->loops_in[IB_LOOP_WAITING];
	if (n == b->concurrency)
		ev_idle_start(b->loop, &b->advance);
}

void bench_loop_set(struct ib_conn *c, enum ib_loop st)
{
	struct bench *b = c->b;
	if (c->loop_state == st)
		return;
	b->loops_in[c->loop_state]--;
	b->loops_in[st]++;
	c->loop_state = st;
	if (st != IB_LOOP_RUNNING)
		check_barrier(b);
}

/* The loops still in the run (waiting, or at the end also running) go on. */
static void resume_loops(struct bench *b)
{
	for (unsigned i = 0; i < b->concurrency; i++) {
		struct ib_conn *c = &b->conns[i];
		if (c->loop_state != IB_LOOP_WAITING && c->loop_state != IB_LOOP_RUNNING)
			continue;
		bench_loop_set(c, IB_LOOP_RUNNING);
		b->mode->resume(c);
	}
}

static void split_quota(struct bench *b, unsigned total)
{
	for (unsigned i = 0; i < b->concurrency; i++)
		b->conns[i].quota = total / b->concurrency + (i < total % b->concurrency ? 1 : 0);
}

static void advance_cb(struct ev_loop *loop, ev_idle *w, int revents)
{
	(void)revents;
	struct bench *b = w->data;
	ev_idle_stop(loop, w);
	if (b->phase == IB_PH_WARMUP) {
		b->phase = IB_PH_MEASURE;
		b->started = 0;
		b->target = b->n;
		if (b->mode_id == IB_LATENCY)
			split_quota(b, b->n);
		fprintf(stderr, "imapbench: %s: measuring\n", b->mode->name);
		cpu_sample(b, &b->cpu0);
		b->t_start = ib_now();
		resume_loops(b);
		check_barrier(b); /* all dead already, or nothing to do */
		return;
	}
	if (b->phase == IB_PH_MEASURE) {
		b->t_end = ib_now();
		cpu_sample(b, &b->cpu1);
		b->phase = IB_PH_END;
		resume_loops(b);
		check_barrier(b);
		return;
	}
	ev_break(loop, EVBREAK_ALL); /* END: every loop finished or gone */
}

static void limit_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	(void)revents;
	struct bench *b = w->data;
	b->stopped_by_time = 1;
	if (b->phase != IB_PH_END) {
		if (b->phase == IB_PH_MEASURE) {
			b->t_end = ib_now();
			cpu_sample(b, &b->cpu1);
		}
		fprintf(stderr, "imapbench: time limit (%.1fs) reached: stopped\n", b->time_limit);
	}
	ev_break(loop, EVBREAK_ALL);
}

/* ---- output ---- */

static void json_str(FILE *f, const char *s)
{
	if (s == NULL) {
		fputs("null", f);
		return;
	}
	fputc('"', f);
	for (; *s; s++) {
		unsigned char ch = (unsigned char)*s;
		if (ch == '"' || ch == '\\')
			fprintf(f, "\\%c", ch);
		else if (ch < 0x20)
			fprintf(f, "\\u%04x", ch);
		else
			fputc(ch, f);
	}
	fputc('"', f);
}

static void json_num(FILE *f, double v, int valid)
{
	if (!valid)
		fputs("null", f);
	else
		fprintf(f, "%.6g", v);
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

/* Nearest rank: the smallest sample with at least q of them <= it. */
static double pct(const double *v, size_t n, double q)
{
	size_t r = (size_t)(q * (double)n + 0.999999);
	if (r < 1)
		r = 1;
	if (r > n)
		r = n;
	return v[r - 1];
}

static void print_pid_array(FILE *f, const long *v, unsigned n)
{
	fputc('[', f);
	for (unsigned i = 0; i < n; i++)
		fprintf(f, "%s%ld", i ? "," : "", v[i]);
	fputc(']', f);
}

static const char *const tls_names[] = {"implicit", "starttls", "none"};

static void print_result(struct bench *b)
{
	FILE *f = stdout;
	double wall = b->t_end > b->t_start ? b->t_end - b->t_start : 0;
	int have_cpu = b->npids > 0 && b->cpu_ok && b->t_end > 0;
	double cpu = 0;
	for (unsigned i = 0; have_cpu && i < b->npids; i++)
		cpu += b->cpu1.s[i] - b->cpu0.s[i];

	fprintf(f, "{\"mode\":");
	json_str(f, b->mode->name);
	fprintf(f, ",\"label\":");
	json_str(f, b->label);
	char target[300];
	snprintf(target, sizeof(target), b->addr.ss_family == AF_INET6 ? "[%s]:%d" : "%s:%d",
	         b->host, b->port);
	fprintf(f, ",\"target\":");
	json_str(f, target);
	fprintf(f,
	        ",\"tls\":\"%s\",\"concurrency\":%u,\"ops\":%llu,\"errors\":%llu,\"first_error\":",
	        tls_names[b->tls], b->concurrency, (unsigned long long)b->ops,
	        (unsigned long long)b->errors);
	json_str(f, b->errors ? b->first_error : NULL);
	fprintf(f, ",\"stopped_by_time\":%s,\"wall_s\":", b->stopped_by_time ? "true" : "false");
	json_num(f, wall, 1);
	fprintf(f, ",\"ops_per_s\":");
	json_num(f, wall > 0 ? (double)b->ops / wall : 0, wall > 0);
	fprintf(f, ",\"cpu_s\":");
	json_num(f, cpu, have_cpu);
	fprintf(f, ",\"cpu_per_op_us\":");
	json_num(f, b->ops ? cpu / (double)b->ops * 1e6 : 0, have_cpu && b->ops > 0);
	fprintf(f, ",\"cpu_pids\":[");
	for (unsigned i = 0; i < b->npids; i++) {
		fprintf(f, "%s", i ? "," : "");
		json_num(f, b->cpu1.s[i] - b->cpu0.s[i], have_cpu);
	}
	fprintf(f, "],\"resumed\":");
	if (b->mode_id == IB_LOGINS)
		fprintf(f, "%llu", (unsigned long long)b->resumed);
	else
		fputs("null", f);
	fprintf(f, ",\"lat_us\":");
	if (b->nlat > 0) {
		qsort(b->lat, b->nlat, sizeof(double), cmp_double);
		double sum = 0;
		for (size_t i = 0; i < b->nlat; i++)
			sum += b->lat[i];
		fprintf(f,
		        "{\"p50\":%.1f,\"p90\":%.1f,\"p99\":%.1f,\"p999\":%.1f,\"max\":%.1f,"
		        "\"mean\":%.1f,\"samples\":%zu}",
		        pct(b->lat, b->nlat, 0.50), pct(b->lat, b->nlat, 0.90),
		        pct(b->lat, b->nlat, 0.99), pct(b->lat, b->nlat, 0.999),
		        b->lat[b->nlat - 1], sum / (double)b->nlat, b->nlat);
	} else {
		fputs("null", f);
	}
	int bulk = b->mode_id == IB_BULK;
	double mb = (double)b->bytes / 1e6;
	fprintf(f, ",\"bytes\":");
	if (bulk)
		fprintf(f, "%llu", (unsigned long long)b->bytes);
	else
		fputs("null", f);
	fprintf(f, ",\"mb_per_s\":");
	json_num(f, wall > 0 ? mb / wall : 0, bulk && wall > 0);
	fprintf(f, ",\"cpu_per_mb_ms\":");
	json_num(f, mb > 0 ? cpu * 1000 / mb : 0, bulk && have_cpu && mb > 0);
	int idle = b->mode_id == IB_IDLE;
	const char *keys[2][4] = {
	    {"rss_kb", "backend_conns", "rss_kb_tree", "backend_conns_tree"},
	    {"rss_kb_hold", "backend_conns_hold", "rss_kb_tree_hold", "backend_conns_tree_hold"}};
	for (int s = 0; s < 2; s++) {
		const long *arrs[4] = {b->rss_kb[s], b->conns_to[s], b->rss_tree_kb[s],
		                       b->conns_tree[s]};
		for (int k = 0; k < 4; k++) {
			fprintf(f, ",\"%s\":", keys[s][k]);
			if (idle && b->idle_sampled > s && (k % 2 == 0 || b->backend_port > 0))
				print_pid_array(f, arrs[k], b->npids);
			else
				fputs("null", f);
		}
	}
	fprintf(f, ",\"commands\":");
	if (b->mode_id == IB_MIX) {
		fputc('{', f);
		for (int i = 0; i < IB_MIX_COUNT; i++)
			fprintf(f, "%s\"%s\":%llu", i ? "," : "", ib_mix_names[i],
			        (unsigned long long)b->commands[i]);
		fprintf(f, "},\"no_replies\":%llu,\"mix\":", (unsigned long long)b->no_replies);
		json_str(f, ib_mix_description);
	} else {
		fputs("null", f);
	}
	fprintf(f, "}\n");
	fflush(f);
}

/* ---- options ---- */

static void usage(FILE *f)
{
	fputs(
	    "usage: imapbench MODE -p PORT [options]\n"
	    "modes: logins [--resume] | latency [--cmd noop|fetch] [--uid N]\n"
	    "       | bulk --fetch [--uid N] | bulk --append BYTES | idle [--settle S] [--hold S]\n"
	    "         [--backend-port PORT] | mix [--seed N]\n"
	    "  -H HOST      default 127.0.0.1 (a numeric address, IPv4 or IPv6)\n"
	    "  -p PORT      required\n"
	    "  -T implicit|starttls|none   default implicit (TLS 1.2+, unverified unless --ca)\n"
	    "  -u FMT       user name, at most one %d (default bench%02d)\n"
	    "  -U N         users: loop i is user i % N (default 1)\n"
	    "  -w PASS      password (default benchpw)\n"
	    "  -m MAILBOX   default INBOX\n"
	    "  -c N         concurrent loops / connections (default 1)\n"
	    "  -n N         operations measured (mode default)\n"
	    "  -t SECS      hard time limit (default 60)\n"
	    "  --pid PID    (repeatable) CPU of this process tree around the measured phase\n"
	    "  --label TEXT, --warmup N, --ca FILE\n"
	    "Output: one JSON object on stdout. Exit 0 ok, 1 an operation failed, 2 usage.\n",
	    f);
}

static int bad(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int bad(const char *fmt, ...)
{
	va_list ap;
	fputs("imapbench: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputs(" (imapbench --help)\n", stderr);
	return -1;
}

static int parse_u64(const char *s, uint64_t min, uint64_t max, uint64_t *out)
{
	char *end;
	errno = 0;
	unsigned long long v = strtoull(s, &end, 10);
	if (errno || end == s || *end || s[0] == '-' || v < min || v > max)
		return -1;
	*out = v;
	return 0;
}

static int parse_uint(const char *opt, const char *s, uint64_t min, uint64_t max, unsigned *out)
{
	uint64_t v;
	if (parse_u64(s, min, max, &v) < 0)
		return bad("%s: not a number in %llu..%llu: %s", opt, (unsigned long long)min,
		           (unsigned long long)max, s);
	*out = (unsigned)v;
	return 0;
}

static int parse_secs(const char *opt, const char *s, double min, double *out)
{
	char *end;
	errno = 0;
	double v = strtod(s, &end);
	if (errno || end == s || *end || !(v >= min) || v > 86400)
		return bad("%s: not a number of seconds: %s", opt, s);
	*out = v;
	return 0;
}

/* -u: "prefix%[0][width]dsuffix" or no %d at all; "%%" is a '%'. */
static int parse_user_fmt(struct bench *b, const char *fmt)
{
	if (strlen(fmt) >= sizeof(b->user_fmt) - 1)
		return bad("-u: too long");
	snprintf(b->user_fmt, sizeof(b->user_fmt), "%s", fmt);
	b->user_has_d = b->user_zero = b->user_width = 0;
	b->user_prefix = b->user_suffix = NULL;
	for (const char *p = fmt; *p; p++) {
		if (*p != '%')
			continue;
		if (p[1] == '%') {
			p++;
			continue;
		}
		const char *q = p + 1;
		int zero = 0, width = 0;
		if (*q == '0') {
			zero = 1;
			q++;
		}
		while (*q >= '0' && *q <= '9' && width < 100)
			width = width * 10 + (*q++ - '0');
		if (*q != 'd' || b->user_has_d || width > 40)
			return bad("-u: a printf format with at most one %%d: %s", fmt);
		b->user_has_d = 1;
		b->user_zero = zero;
		b->user_width = width;
		b->user_fmt[p - fmt] = '\0';
		b->user_prefix = b->user_fmt;
		b->user_suffix = q + 1;
		p = q;
	}
	return 0;
}

static void unescape_pct(char *out, size_t cap, const char *in)
{
	size_t o = 0;
	for (; *in && o + 1 < cap; in++) {
		if (in[0] == '%' && in[1] == '%')
			in++;
		out[o++] = *in;
	}
	out[o] = '\0';
}

static void make_user(const struct bench *b, unsigned i, char *out, size_t cap)
{
	char pre[128], suf[128];
	if (!b->user_has_d) {
		unescape_pct(out, cap, b->user_fmt);
		return;
	}
	unescape_pct(pre, sizeof(pre), b->user_prefix);
	unescape_pct(suf, sizeof(suf), b->user_suffix);
	int v = (int)(i % b->users), k;
	if (b->user_zero)
		k = snprintf(out, cap, "%s%0*d%s", pre, b->user_width, v, suf);
	else
		k = snprintf(out, cap, "%s%*d%s", pre, b->user_width, v, suf);
	if (k < 0 || (size_t)k >= cap)
		out[0] = '\0'; /* too long: the server refuses the login, loudly */
}

enum {
	OPT_PID = 256,
	OPT_LABEL,
	OPT_WARMUP,
	OPT_RESUME,
	OPT_CMD,
	OPT_FETCH,
	OPT_APPEND,
	OPT_UID,
	OPT_SETTLE,
	OPT_HOLD,
	OPT_BACKEND_PORT,
	OPT_CA,
	OPT_SEED,
	OPT_HELP
};

static const struct option long_opts[] = {
    {"pid", required_argument, NULL, OPT_PID},
    {"label", required_argument, NULL, OPT_LABEL},
    {"warmup", required_argument, NULL, OPT_WARMUP},
    {"resume", no_argument, NULL, OPT_RESUME},
    {"cmd", required_argument, NULL, OPT_CMD},
    {"fetch", no_argument, NULL, OPT_FETCH},
    {"append", required_argument, NULL, OPT_APPEND},
    {"uid", required_argument, NULL, OPT_UID},
    {"settle", required_argument, NULL, OPT_SETTLE},
    {"hold", required_argument, NULL, OPT_HOLD},
    {"backend-port", required_argument, NULL, OPT_BACKEND_PORT},
    {"ca", required_argument, NULL, OPT_CA},
    {"seed", required_argument, NULL, OPT_SEED},
    {"help", no_argument, NULL, OPT_HELP},
    {NULL, 0, NULL, 0},
};

static int parse_args(struct bench *b, int argc, char **argv)
{
	if (argc < 2 || argv[1][0] == '-') {
		if (argc >= 2 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0)) {
			usage(stdout);
			exit(0);
		}
		return bad("the first argument is the mode");
	}
	static const struct {
		const char *name;
		enum ib_mode_id id;
		const struct ib_mode *m;
	} modes[] = {{"logins", IB_LOGINS, &ib_mode_logins},
	             {"latency", IB_LATENCY, &ib_mode_latency},
	             {"bulk", IB_BULK, &ib_mode_bulk},
	             {"idle", IB_IDLE, &ib_mode_idle},
	             {"mix", IB_MIX, &ib_mode_mix}};
	for (size_t i = 0; i < sizeof(modes) / sizeof(modes[0]); i++)
		if (strcmp(argv[1], modes[i].name) == 0) {
			b->mode = modes[i].m;
			b->mode_id = modes[i].id;
		}
	if (b->mode == NULL)
		return bad("unknown mode: %s", argv[1]);
	int have_n = 0, have_warmup = 0, have_fetch = 0, have_append = 0;
	const char *cmd = NULL;
	optind = 2;
	int o;
	while ((o = getopt_long(argc, argv, "H:p:T:u:U:w:m:c:n:t:h", long_opts, NULL)) != -1) {
		unsigned v;
		uint64_t v64;
		switch (o) {
		case 'H':
			b->host = optarg;
			break;
		case 'p':
			if (parse_uint("-p", optarg, 1, 65535, &v) < 0)
				return -1;
			b->port = (int)v;
			break;
		case 'T':
			if (strcmp(optarg, "implicit") == 0)
				b->tls = IB_TLS_IMPLICIT;
			else if (strcmp(optarg, "starttls") == 0)
				b->tls = IB_TLS_STARTTLS;
			else if (strcmp(optarg, "none") == 0)
				b->tls = IB_TLS_NONE;
			else
				return bad("-T: implicit, starttls or none: %s", optarg);
			break;
		case 'u':
			if (parse_user_fmt(b, optarg) < 0)
				return -1;
			break;
		case 'U':
			if (parse_uint("-U", optarg, 1, 10000000, &b->users) < 0)
				return -1;
			break;
		case 'w':
			if (strpbrk(optarg, "\r\n") != NULL || strlen(optarg) > 1000)
				return bad("-w: no CR or LF, at most 1000 bytes");
			b->password = optarg;
			break;
		case 'm':
			if (strpbrk(optarg, "\r\n\"\\") != NULL || strlen(optarg) > 500)
				return bad("-m: no CR, LF, quote or backslash, at most 500 bytes");
			b->mailbox = optarg;
			break;
		case 'c':
			if (parse_uint("-c", optarg, 1, 200000, &b->concurrency) < 0)
				return -1;
			break;
		case 'n':
			if (parse_uint("-n", optarg, 1, 100000000, &b->n) < 0)
				return -1;
			have_n = 1;
			break;
		case 't':
			if (parse_secs("-t", optarg, 0.001, &b->time_limit) < 0)
				return -1;
			break;
		case OPT_PID:
			if (b->npids == IB_MAX_PIDS)
				return bad("--pid: at most %d", IB_MAX_PIDS);
			if (parse_uint("--pid", optarg, 1, 1u << 30, &v) < 0)
				return -1;
			b->pids[b->npids++] = (int)v;
			break;
		case OPT_LABEL:
			b->label = optarg;
			break;
		case OPT_WARMUP:
			if (parse_uint("--warmup", optarg, 0, 100000000, &b->warmup) < 0)
				return -1;
			have_warmup = 1;
			break;
		case OPT_RESUME:
			b->resume = 1;
			break;
		case OPT_CMD:
			cmd = optarg;
			break;
		case OPT_FETCH:
			have_fetch = 1;
			break;
		case OPT_APPEND:
			if (parse_u64(optarg, 200, 1ull << 31, &v64) < 0)
				return bad("--append: a size in bytes, 200..2^31: %s", optarg);
			b->append_bytes = v64;
			have_append = 1;
			break;
		case OPT_UID:
			if (parse_u64(optarg, 1, 4294967295ull, &v64) < 0)
				return bad("--uid: not a UID: %s", optarg);
			b->opt_uid = v64;
			break;
		case OPT_SETTLE:
			if (parse_secs("--settle", optarg, 0, &b->settle) < 0)
				return -1;
			break;
		case OPT_HOLD:
			if (parse_secs("--hold", optarg, 0, &b->hold) < 0)
				return -1;
			break;
		case OPT_BACKEND_PORT:
			if (parse_uint("--backend-port", optarg, 1, 65535, &v) < 0)
				return -1;
			b->backend_port = (int)v;
			break;
		case OPT_CA:
			b->ca = optarg;
			break;
		case OPT_SEED:
			if (parse_uint("--seed", optarg, 0, 4294967295u, &b->seed) < 0)
				return -1;
			break;
		case 'h':
		case OPT_HELP:
			usage(stdout);
			exit(0);
		default:
			return bad("unknown option");
		}
	}
	if (optind < argc)
		return bad("unexpected argument: %s", argv[optind]);
	if (b->port == 0)
		return bad("-p PORT is required");
	for (unsigned i = 0; i < b->npids; i++)
		if (proc_tree_cpu(b->pids[i]) < 0)
			return bad("--pid %d: no such process", b->pids[i]);
	if (b->resume && b->mode_id != IB_LOGINS)
		return bad("--resume: logins mode only");
	if (b->resume && b->tls == IB_TLS_NONE)
		return bad("--resume: needs TLS");
	if (cmd != NULL) {
		if (b->mode_id != IB_LATENCY)
			return bad("--cmd: latency mode only");
		if (strcmp(cmd, "fetch") == 0)
			b->cmd_fetch = 1;
		else if (strcmp(cmd, "noop") != 0)
			return bad("--cmd: noop or fetch: %s", cmd);
	}
	if (b->mode_id == IB_BULK) {
		if (have_fetch == have_append)
			return bad("bulk: one of --fetch or --append BYTES");
		b->bulk_append = have_append;
	} else if (have_fetch || have_append) {
		return bad("--fetch, --append: bulk mode only");
	}
	if (b->mode_id == IB_LATENCY && b->opt_uid == 0)
		b->opt_uid = 1;
	if (!have_n)
		b->n = b->mode->default_n;
	if (b->mode_id == IB_IDLE)
		b->n = b->concurrency; /* one IDLE session per connection */
	if (!have_warmup) {
		switch (b->mode_id) {
		case IB_LATENCY:
			b->warmup = 10 * b->concurrency;
			break;
		case IB_BULK:
			b->warmup = 1;
			break;
		case IB_IDLE:
			b->warmup = 0;
			break;
		default:
			b->warmup = b->concurrency;
		}
	}
	if (b->mode_id == IB_LATENCY && b->n < b->concurrency)
		return bad("latency: -n must be at least -c (each connection does n/c)");
	if (b->label == NULL)
		b->label = "";
	return 0;
}

static int resolve(struct bench *b)
{
	struct addrinfo hints = {0}, *res = NULL;
	char port[16];
	hints.ai_socktype = SOCK_STREAM;
	hints.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV;
	snprintf(port, sizeof(port), "%d", b->port);
	int r = getaddrinfo(b->host, port, &hints, &res);
	if (r != 0 || res == NULL)
		return bad("-H: a numeric IPv4 or IPv6 address: %s (%s)", b->host, gai_strerror(r));
	memcpy(&b->addr, res->ai_addr, res->ai_addrlen);
	b->addrlen = res->ai_addrlen;
	freeaddrinfo(res);
	return 0;
}

/* Many idle sessions need many descriptors: the soft limit goes to the hard one. */
static void raise_nofile(void)
{
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		(void)setrlimit(RLIMIT_NOFILE, &rl);
	}
}

int main(int argc, char **argv)
{
	static struct bench bench;
	struct bench *b = &bench;
	b->host = "127.0.0.1";
	b->tls = IB_TLS_IMPLICIT;
	b->users = 1;
	b->password = "benchpw";
	b->mailbox = "INBOX";
	b->concurrency = 1;
	b->time_limit = 60;
	b->settle = 2;
	b->cpu_ok = 1;
	b->seed = 1;
	if (parse_user_fmt(b, "bench%02d") < 0)
		return 2;
	if (parse_args(b, argc, argv) < 0 || resolve(b) < 0)
		return 2;
	signal(SIGPIPE, SIG_IGN);
	raise_nofile();
	srandom(b->seed);
	if (net_setup(b) < 0) {
		fprintf(stderr, "imapbench: TLS set-up failed\n");
		return 2;
	}
	b->loop = ev_default_loop(EVFLAG_AUTO);
	b->conns = calloc(b->concurrency, sizeof(*b->conns));
	if (b->conns == NULL)
		return 2;
	ev_idle_init(&b->advance, advance_cb);
	b->advance.data = b;
	ev_timer_init(&b->limit, limit_cb, b->time_limit, 0.);
	b->limit.data = b;
	ev_timer_start(b->loop, &b->limit);
	b->phase = IB_PH_WARMUP;
	b->target = b->warmup;
	b->loops_in[IB_LOOP_RUNNING] = b->concurrency;
	for (unsigned i = 0; i < b->concurrency; i++) {
		conn_init(&b->conns[i], b, i);
		if (b->conns[i].rbuf == NULL) {
			fprintf(stderr, "imapbench: out of memory for %u connections\n",
			        b->concurrency);
			return 2;
		}
		make_user(b, i, b->conns[i].user, sizeof(b->conns[i].user));
	}
	if (b->mode_id == IB_LATENCY)
		split_quota(b, b->warmup);
	for (unsigned i = 0; i < b->concurrency; i++)
		conn_kick(&b->conns[i]);
	ev_run(b->loop, 0);

	if (b->stopped_by_time && b->ops == 0 && b->errors == 0)
		bench_error(b, "time limit (%.1fs) reached before any measured operation completed",
		            b->time_limit);
	print_result(b);
	for (unsigned i = 0; i < b->concurrency; i++)
		conn_destroy(&b->conns[i]);
	free(b->conns);
	free(b->lat);
	free(b->message);
	free(b->mix_message);
	SSL_CTX_free(b->ctx);
	ev_loop_destroy(b->loop);
	return b->errors ? 1 : 0;
}
