/*
 * metrics — the Prometheus text exposition (format 0.0.4) of the workers'
 * counters and of the process (open fds, RSS, start time), written into a
 * growing text buffer. Pure rendering: stats.c's thread calls it for each
 * GET /metrics and owns the HTTP side.
 *
 *   counters[0..n) --stats_collect (relaxed loads, summed)--> metrics_render --> text
 *   backend slots (runtime.h: names, health) ------------------^
 *   runtime_current() ([redis] configured or not) -------------^
 *
 * Per-backend families have one series per backend slot, labelled with the
 * slot's name (escaped: label_value): a name keeps its slot for the life of
 * the process, so its counters survive reloads. Histograms are kept as
 * per-bucket counts (counters.h) and made cumulative here, after the sum
 * over the workers, so that a scrape's buckets never decrease along le.
 * README's metrics table lists every family (test_metrics.py holds them
 * equal).
 */
#include "metrics.h"

#include <dirent.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "counters.h"
#include "runtime.h"
#include "zone.h"

#ifndef IMAPMUX_VERSION
#define IMAPMUX_VERSION "0.1.0" /* as in sess.h */
#endif

/* ------------------------------------------------------------------------
 * text: a growing string for the response, with a sticky failure flag so
 * that the writers need not check each append.
 */

void text_init(struct text *t, size_t cap)
{
	t->len = 0;
	t->cap = cap;
	t->p = malloc(cap);
	t->failed = t->p == NULL;
	if (t->failed)
		t->cap = 0;
}

/* Make room for n more bytes plus a NUL. */
static int text_reserve(struct text *t, size_t n)
{
	size_t cap = t->cap;
	char *p;

	if (t->failed)
		return -1;
	if (t->cap - t->len > n)
		return 0;
	while (cap - t->len <= n)
		cap *= 2;
	p = realloc(t->p, cap);
	if (p == NULL) {
		t->failed = true;
		return -1;
	}
	t->p = p;
	t->cap = cap;
	return 0;
}

void text_append(struct text *t, const void *p, size_t n)
{
	if (text_reserve(t, n) < 0)
		return;
	memcpy(t->p + t->len, p, n);
	t->len += n;
	t->p[t->len] = '\0';
}

void text_printf(struct text *t, const char *fmt, ...)
{
	va_list ap;
	int n;

	if (t->failed)
		return;
	va_start(ap, fmt);
	n = vsnprintf(t->p + t->len, t->cap - t->len, fmt, ap);
	va_end(ap);
	if (n < 0) {
		t->failed = true;
		return;
	}
	if ((size_t)n < t->cap - t->len) {
		t->len += (size_t)n;
		return;
	}
	/* It did not fit: grow, then format again from the start. */
	if (text_reserve(t, (size_t)n) < 0)
		return;
	va_start(ap, fmt);
	n = vsnprintf(t->p + t->len, t->cap - t->len, fmt, ap);
	va_end(ap);
	if (n < 0 || (size_t)n >= t->cap - t->len) {
		t->failed = true;
		return;
	}
	t->len += (size_t)n;
}

/* ------------------------------------------------------------------------
 * metrics
 */

struct stats_sum {
	unsigned long conns_total;
	long sessions_active;
	long sessions_proxying;
	unsigned long logins_ok;
	unsigned long logins_auth_failed;
	unsigned long logins_unavailable;
	unsigned long backend_connects;
	unsigned long backend_lost;
	unsigned long backend_logins;
	unsigned long sessions_reused;
	unsigned long backend_unauths;
	unsigned long caps_queries;
	unsigned long caps_changes;
	unsigned long client_bytes_in;
	unsigned long client_bytes_out;
	unsigned long preauth_bad;
	unsigned long tls_handshake_failed, tls_handshakes, tls_resumed;
	unsigned long refused_total;
	unsigned long refused_ip;
	unsigned long line_too_long;
	long sessions_parked;
	long sessions_compressed;
	unsigned long compress_started;
	long watchers, watchers_up;
	unsigned long watchers_lost;
	unsigned long parks, wakes_client, wakes_change, wakes_failed, park_answers,
	    park_keepalives, tls_shed;
	long redis_up; /* workers whose Redis command link is up */
	unsigned long redis_reconnects;
	unsigned long lockouts_ip, lockouts_user;
	unsigned long route_redis, route_cache, route_fallback, route_static;
};

#define LOAD(st, field) atomic_load_explicit(&(st)->field, memory_order_relaxed)

static void stats_collect(struct stats_sum *s, const struct stats *const *counters, unsigned n)
{
	memset(s, 0, sizeof(*s));
	for (unsigned i = 0; i < n; i++) {
		const struct stats *st = counters[i];

		s->conns_total += LOAD(st, conns_total);
		s->sessions_active += LOAD(st, sessions_active);
		s->sessions_proxying += LOAD(st, sessions_proxying);
		s->logins_ok += LOAD(st, logins_ok);
		s->logins_auth_failed += LOAD(st, logins_auth_failed);
		s->logins_unavailable += LOAD(st, logins_unavailable);
		s->backend_connects += LOAD(st, backend_connects);
		s->backend_lost += LOAD(st, backend_lost);
		s->backend_logins += LOAD(st, backend_logins);
		s->sessions_reused += LOAD(st, sessions_reused);
		s->backend_unauths += LOAD(st, backend_unauths);
		s->caps_queries += LOAD(st, caps_queries);
		s->caps_changes += LOAD(st, caps_changes);
		s->client_bytes_in += LOAD(st, client_bytes_in);
		s->client_bytes_out += LOAD(st, client_bytes_out);
		s->preauth_bad += LOAD(st, preauth_bad);
		s->tls_handshake_failed += LOAD(st, tls_handshake_failed);
		s->tls_handshakes += LOAD(st, tls_handshakes);
		s->tls_resumed += LOAD(st, tls_resumed);
		s->refused_total += LOAD(st, refused_total);
		s->refused_ip += LOAD(st, refused_ip);
		s->sessions_parked += LOAD(st, sessions_parked);
		s->sessions_compressed += LOAD(st, sessions_compressed);
		s->compress_started += LOAD(st, compress_started);
		s->parks += LOAD(st, parks);
		s->wakes_client += LOAD(st, wakes_client);
		s->wakes_change += LOAD(st, wakes_change);
		s->wakes_failed += LOAD(st, wakes_failed);
		s->park_answers += LOAD(st, park_answers);
		s->park_keepalives += LOAD(st, park_keepalives);
		s->tls_shed += LOAD(st, tls_shed);
		s->watchers += LOAD(st, watchers);
		s->watchers_up += LOAD(st, watchers_up);
		s->watchers_lost += LOAD(st, watchers_lost);
		s->line_too_long += LOAD(st, line_too_long);
		s->redis_up += LOAD(st, redis_up);
		s->redis_reconnects += LOAD(st, redis_reconnects);
		s->lockouts_ip += LOAD(st, lockouts_ip);
		s->lockouts_user += LOAD(st, lockouts_user);
		s->route_redis += LOAD(st, route_redis);
		s->route_cache += LOAD(st, route_cache);
		s->route_fallback += LOAD(st, route_fallback);
		s->route_static += LOAD(st, route_static);
	}
}

/* Entries of /proc/self/fd, less the one opendir itself holds. */
static int proc_open_fds(unsigned long *n_r)
{
	DIR *d = opendir("/proc/self/fd");
	struct dirent *e;
	unsigned long n = 0;

	if (d == NULL)
		return -1;
	while ((e = readdir(d)) != NULL) {
		if (e->d_name[0] != '.')
			n++;
	}
	closedir(d);
	*n_r = n > 0 ? n - 1 : 0;
	return 0;
}

/* Resident set size: the second field of /proc/self/statm, in pages. */
static int proc_rss_bytes(unsigned long long *bytes_r)
{
	FILE *f = fopen("/proc/self/statm", "re");
	long page = sysconf(_SC_PAGESIZE);
	unsigned long size, resident;
	int n;

	if (f == NULL)
		return -1;
	n = fscanf(f, "%lu %lu", &size, &resident);
	fclose(f);
	if (n != 2 || page <= 0)
		return -1;
	*bytes_r = (unsigned long long)resident * (unsigned long long)page;
	return 0;
}

static void metric_head(struct text *t, const char *name, const char *type, const char *help)
{
	text_printf(t, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void counter(struct text *t, const char *name, const char *help, unsigned long v)
{
	metric_head(t, name, "counter", help);
	text_printf(t, "%s %lu\n", name, v);
}

static void gauge(struct text *t, const char *name, const char *help, long v)
{
	metric_head(t, name, "gauge", help);
	text_printf(t, "%s %ld\n", name, v);
}

/* ------------------------------------------------------------------------
 * per backend: one series per backend slot (runtime.h), labelled with the
 * slot's name; a name keeps its slot, so its counters, across reloads
 */

/* v as a label value (text format 0.0.4: backslash, double quote and line
 * feed escaped), between the quotes the caller writes. */
static void label_value(struct text *t, const char *v)
{
	for (; *v != '\0'; v++) {
		if (*v == '\\')
			text_append(t, "\\\\", 2);
		else if (*v == '"')
			text_append(t, "\\\"", 2);
		else if (*v == '\n')
			text_append(t, "\\n", 2);
		else
			text_append(t, v, 1);
	}
}

/* name{backend="slot's name" — the caller goes on with more labels or '}'.
 * STATS_NO_SLOT is backend="": no backend chosen (or past the slots). */
static void bk_series(struct text *t, const char *name, const char *suffix, unsigned slot)
{
	text_printf(t, "%s%s{backend=\"", name, suffix);
	if (slot != STATS_NO_SLOT)
		label_value(t, runtime_slot_name(slot));
	text_append(t, "\"", 1);
}

/* The sum over the workers of the field at off in slot's struct stats_backend. */
static long bk_sum(const struct stats *const *counters, unsigned n, unsigned slot, size_t off)
{
	long sum = 0;

	for (unsigned i = 0; i < n; i++) {
		const char *sb = (const char *)&counters[i]->bk[slot];

		sum += atomic_load_explicit((const atomic_long *)(sb + off), memory_order_relaxed);
	}
	return sum;
}

#define BK_SUM(slot, field) bk_sum(counters, n, slot, offsetof(struct stats_backend, field))

/* A gauge or counter family with one sample per slot. */
static void bk_family(struct text *t, const struct stats *const *counters, unsigned n,
                      const char *name, const char *type, const char *help, size_t off)
{
	unsigned nslots = runtime_slots();

	metric_head(t, name, type, help);
	for (unsigned slot = 0; slot < nslots; slot++) {
		long v = bk_sum(counters, n, slot, off);

		bk_series(t, name, "", slot);
		/* A gauge summed from loads made at different moments can dip
		 * below zero for an instant. */
		text_printf(t, "} %ld\n", v < 0 ? 0 : v);
	}
}

/*
 * One histogram series: buckets summed over the workers (each loaded once),
 * then made cumulative, so that they never decrease along le and the +Inf
 * bucket is the count. hist_off: where the struct stats_hist is in a
 * struct stats.
 */
static void hist_series(struct text *t, const struct stats *const *counters, unsigned n,
                        const char *name, unsigned slot, size_t hist_off)
{
	static const double bounds[STATS_HIST_N] = STATS_HIST_BOUNDS;
	unsigned long b[STATS_HIST_N + 1] = {0}, sum_us = 0, cum = 0;

	for (unsigned i = 0; i < n; i++) {
		const struct stats_hist *h =
		    (const struct stats_hist *)((const char *)counters[i] + hist_off);

		for (unsigned j = 0; j <= STATS_HIST_N; j++)
			b[j] += atomic_load_explicit(&h->bucket[j], memory_order_relaxed);
		sum_us += atomic_load_explicit(&h->sum_us, memory_order_relaxed);
	}
	for (unsigned j = 0; j <= STATS_HIST_N; j++) {
		cum += b[j];
		bk_series(t, name, "_bucket", slot);
		if (j < STATS_HIST_N)
			text_printf(t, ",le=\"%g\"} %lu\n", bounds[j], cum);
		else
			text_printf(t, ",le=\"+Inf\"} %lu\n", cum);
	}
	bk_series(t, name, "_sum", slot);
	text_printf(t, "} %.6f\n", (double)sum_us / 1e6);
	bk_series(t, name, "_count", slot);
	text_printf(t, "} %lu\n", cum);
}

#define BK_HIST_OFF(slot, field)                                                                   \
	(offsetof(struct stats, bk) + (slot) * sizeof(struct stats_backend) +                      \
	 offsetof(struct stats_backend, field))

static void render_backends(struct text *t, const struct stats *const *counters, unsigned n)
{
	unsigned nslots = runtime_slots();
	const char *name;

	name = "imapmux_backend_up";
	metric_head(t, name, "gauge",
	            "1 while the backend passes its health checks (or is not checked), else 0.");
	for (unsigned slot = 0; slot < nslots; slot++) {
		bk_series(t, name, "", slot);
		text_printf(t, "} %d\n", runtime_slot_up(slot) ? 1 : 0);
	}

	name = "imapmux_backend_drained";
	metric_head(t, name, "gauge",
	            "1 while an operator has the backend drained (imapmuxctl backend NAME drain), "
	            "else 0.");
	for (unsigned slot = 0; slot < nslots; slot++) {
		bk_series(t, name, "", slot);
		text_printf(t, "} %d\n", BK_SUM(slot, drained) > 0 ? 1 : 0);
	}

	name = "imapmux_backend_connections";
	metric_head(t, name, "gauge",
	            "Backend connections of client sessions, pools and watchers now, by state.");
	for (unsigned slot = 0; slot < nslots; slot++) {
		for (unsigned c = 0; c < STATS_CONN_N; c++) {
			long v =
			    bk_sum(counters, n, slot,
			           offsetof(struct stats_backend, conns) + c * sizeof(atomic_long));
			bk_series(t, name, "", slot);
			text_printf(t, ",state=\"%s\"} %ld\n", stats_conn_class_name(c),
			            v < 0 ? 0 : v);
		}
	}
	bk_family(t, counters, n, "imapmux_backend_connections_opened_total", "counter",
	          "Backend connections opened, per backend.",
	          offsetof(struct stats_backend, connects));

	/* Logins answered before a backend was chosen count under backend="". */
	name = "imapmux_backend_client_logins_total";
	metric_head(t, name, "counter",
	            "Client logins (LOGIN, AUTHENTICATE) by the backend they were routed to "
	            "(\"\": answered before one was chosen) and result.");
	for (unsigned slot = 0; slot <= nslots; slot++) {
		unsigned sl = slot == nslots ? STATS_NO_SLOT : slot;

		bk_series(t, name, "", sl);
		text_printf(t, ",result=\"ok\"} %ld\n", BK_SUM(sl, logins_ok));
		bk_series(t, name, "", sl);
		text_printf(t, ",result=\"auth_failed\"} %ld\n", BK_SUM(sl, logins_failed));
		bk_series(t, name, "", sl);
		text_printf(t, ",result=\"unavailable\"} %ld\n", BK_SUM(sl, logins_unavailable));
	}

	bk_family(t, counters, n, "imapmux_backend_reuse_hits_total", "counter",
	          "Client logins served by a backend session kept after an earlier LOGOUT.",
	          offsetof(struct stats_backend, reuse_hits));

	name = "imapmux_backend_pool_connections";
	metric_head(t, name, "gauge",
	            "The worker pools' connections now: idle (greeted, ready), opening "
	            "(connecting or coming back), in_use (lent to a session or kept for reuse).");
	for (unsigned slot = 0; slot < nslots; slot++) {
		long idle = BK_SUM(slot, pool_idle), opening = BK_SUM(slot, pool_opening);
		long in_use = BK_SUM(slot, pool_total) - idle - opening;

		bk_series(t, name, "", slot);
		text_printf(t, ",state=\"idle\"} %ld\n", idle < 0 ? 0 : idle);
		bk_series(t, name, "", slot);
		text_printf(t, ",state=\"opening\"} %ld\n", opening < 0 ? 0 : opening);
		bk_series(t, name, "", slot);
		text_printf(t, ",state=\"in_use\"} %ld\n", in_use < 0 ? 0 : in_use);
	}
	bk_family(t, counters, n, "imapmux_backend_pool_waiters", "gauge",
	          "Logins waiting for a pool connection (the pool at pool_max).",
	          offsetof(struct stats_backend, pool_waiters));

	name = "imapmux_login_duration_seconds";
	metric_head(t, name, "histogram",
	            "Client logins from the command read to its tagged answer, by backend "
	            "(\"\": answered before one was chosen).");
	for (unsigned slot = 0; slot < nslots; slot++)
		hist_series(t, counters, n, name, slot, BK_HIST_OFF(slot, login_seconds));
	hist_series(t, counters, n, name, STATS_NO_SLOT, offsetof(struct stats, login_noslot));

	name = "imapmux_backend_connect_duration_seconds";
	metric_head(t, name, "histogram",
	            "Backend connections from the connect to READY (TCP, TLS, greeting, "
	            "capabilities).");
	for (unsigned slot = 0; slot < nslots; slot++)
		hist_series(t, counters, n, name, slot, BK_HIST_OFF(slot, connect_seconds));
}

/*
 * The exposition (text format 0.0.4). Process metrics that cannot be read
 * are left out rather than shown with a made-up value.
 */
void metrics_render(struct text *t, const struct stats *const *counters, unsigned n,
                    double start_time)
{
	struct stats_sum s;
	struct runtime *rt;
	unsigned long fds;
	unsigned long long rss;
	const char *name;

	stats_collect(&s, counters, n);
	rt = runtime_current();
	gauge(t, "imapmux_up", "1 while imapmux serves metrics.", 1);
	metric_head(t, "imapmux_build_info", "gauge", "Always 1; the version in a label.");
	text_printf(t, "imapmux_build_info{version=\"");
	label_value(t, IMAPMUX_VERSION);
	text_printf(t, "\"} 1\n");
	gauge(t, "imapmux_workers", "Worker threads.", (long)n);
	counter(t, "imapmux_connections_total", "Client connections accepted.", s.conns_total);
	gauge(t, "imapmux_sessions", "Client sessions open now.", s.sessions_active);
	gauge(t, "imapmux_sessions_proxying", "Client sessions logged in and proxying now.",
	      s.sessions_proxying);
	gauge(t, "imapmux_sessions_parked",
	      "Client sessions parked now: logged in, holding no backend connection.",
	      s.sessions_parked);
	gauge(t, "imapmux_sessions_compressed",
	      "Sessions with COMPRESS=DEFLATE on (each holds zlib state: BENCHMARKS.md).",
	      s.sessions_compressed);
	counter(t, "imapmux_compress_started_total", "Sessions that turned COMPRESS=DEFLATE on.",
	        s.compress_started);
	counter(t, "imapmux_parks_total", "Times a quiet session gave its backend connection up.",
	        s.parks);
	name = "imapmux_wakes_total";
	metric_head(t, name, "counter", "Parked sessions woken, by cause.");
	text_printf(t, "%s{cause=\"client\"} %lu\n", name, s.wakes_client);
	text_printf(t, "%s{cause=\"change\"} %lu\n", name, s.wakes_change);
	counter(t, "imapmux_wake_failures_total",
	        "Wakes that ended their session (backend unavailable, mailbox gone or changed).",
	        s.wakes_failed);
	counter(t, "imapmux_park_answers_total",
	        "Commands a parked session had answered by imapmux (DONE, IDLE, NOOP, CHECK).",
	        s.park_answers);
	counter(t, "imapmux_park_keepalives_total",
	        "Keep-alives (* OK Still here) sent to parked sessions in IDLE.",
	        s.park_keepalives);
	{
		size_t mapped, used;
		zone_stats(&mapped, &used);
		name = "imapmux_zone_bytes";
		metric_head(t, name, "gauge",
		            "Memory of the zone that holds sessions' long-lived objects (zone.h): "
		            "blocks mapped, slots in use.");
		text_printf(t, "%s{kind=\"mapped\"} %zu\n", name, mapped);
		text_printf(t, "%s{kind=\"used\"} %zu\n", name, used);
	}
	counter(t, "imapmux_tls_handovers_total",
	        "Client TLS 1.3 connections of parked sessions carried on by imapmux's own record "
	        "layer, OpenSSL's state for them freed.",
	        s.tls_shed);
	gauge(t, "imapmux_watchers",
	      "Watcher connections (IDLE per user and mailbox) for parked sessions.", s.watchers);
	gauge(t, "imapmux_watchers_up", "Watcher connections in IDLE now.", s.watchers_up);
	counter(t, "imapmux_watchers_lost_total", "Watcher connections lost or refused.",
	        s.watchers_lost);

	name = "imapmux_logins_total";
	metric_head(t, name, "counter", "Client logins, by result.");
	text_printf(t, "%s{result=\"ok\"} %lu\n", name, s.logins_ok);
	text_printf(t, "%s{result=\"auth_failed\"} %lu\n", name, s.logins_auth_failed);
	text_printf(t, "%s{result=\"unavailable\"} %lu\n", name, s.logins_unavailable);

	counter(t, "imapmux_backend_connects_total", "Backend connections opened.",
	        s.backend_connects);
	counter(t, "imapmux_backend_lost_total", "Sessions ended by a lost backend connection.",
	        s.backend_lost);
	counter(t, "imapmux_backend_logins_total", "Logins sent to backends.", s.backend_logins);
	counter(t, "imapmux_sessions_reused_total",
	        "Logins served by a backend session kept after an earlier LOGOUT.",
	        s.sessions_reused);
	counter(t, "imapmux_backend_unauthenticated_total",
	        "Backend connections returned to the pool with UNAUTHENTICATE after a LOGOUT.",
	        s.backend_unauths);
	counter(t, "imapmux_backend_capability_queries_total",
	        "CAPABILITY commands sent after a backend login because neither its OK nor the "
	        "cache had the capabilities.",
	        s.caps_queries);
	counter(t, "imapmux_backend_capability_changes_total",
	        "Times a backend's post-login capabilities differed from the cached ones.",
	        s.caps_changes);
	counter(t, "imapmux_client_bytes_received_total",
	        "Bytes read from clients (after TLS decryption).", s.client_bytes_in);
	counter(t, "imapmux_client_bytes_sent_total",
	        "Bytes written to clients (before TLS encryption).", s.client_bytes_out);
	counter(t, "imapmux_preauth_bad_commands_total", "BAD answers to clients before login.",
	        s.preauth_bad);
	counter(t, "imapmux_tls_handshake_failures_total", "Client TLS handshakes that failed.",
	        s.tls_handshake_failed);
	metric_head(t, "imapmux_tls_handshakes_total", "counter",
	            "Client TLS handshakes done, full or resumed from a session ticket.");
	text_printf(t, "imapmux_tls_handshakes_total{resumed=\"no\"} %lu\n", s.tls_handshakes);
	text_printf(t, "imapmux_tls_handshakes_total{resumed=\"yes\"} %lu\n", s.tls_resumed);
	metric_head(t, "imapmux_connections_refused_total", "counter",
	            "Client connections refused by a connection limit.");
	text_printf(t, "imapmux_connections_refused_total{limit=\"max_connections\"} %lu\n",
	            s.refused_total);
	text_printf(t, "imapmux_connections_refused_total{limit=\"max_connections_per_ip\"} %lu\n",
	            s.refused_ip);
	counter(t, "imapmux_lines_too_long_total",
	        "Sessions closed because a command line after login exceeded max_line_length.",
	        s.line_too_long);

	name = "imapmux_login_lockouts_total";
	metric_head(t, name, "counter",
	            "Logins refused by the brute-force limits, by whose failure budget was spent.");
	text_printf(t, "%s{kind=\"ip\"} %lu\n", name, s.lockouts_ip);
	text_printf(t, "%s{kind=\"user\"} %lu\n", name, s.lockouts_user);
	name = "imapmux_routes_total";
	metric_head(
	    t, name, "counter",
	    "Backends chosen for logins, by where the route came from: redis, the "
	    "worker's cache, fallback (no route, or Redis down), static (lookup = static).");
	text_printf(t, "%s{source=\"redis\"} %lu\n", name, s.route_redis);
	text_printf(t, "%s{source=\"cache\"} %lu\n", name, s.route_cache);
	text_printf(t, "%s{source=\"fallback\"} %lu\n", name, s.route_fallback);
	text_printf(t, "%s{source=\"static\"} %lu\n", name, s.route_static);
	if (rt != NULL && rt->cfg->has_redis) {
		gauge(t, "imapmux_redis_up",
		      "1 while every worker's Redis command connection is up, else 0.",
		      s.redis_up >= (long)n && n > 0 ? 1 : 0);
		counter(t, "imapmux_redis_reconnects_total",
		        "Redis command connections made again after one was lost.",
		        s.redis_reconnects);
	}
	render_backends(t, counters, n);
	runtime_unref(&rt);

	if (proc_open_fds(&fds) == 0) {
		metric_head(t, "process_open_fds", "gauge", "Number of open file descriptors.");
		text_printf(t, "process_open_fds %lu\n", fds);
	}
	if (proc_rss_bytes(&rss) == 0) {
		metric_head(t, "process_resident_memory_bytes", "gauge",
		            "Resident memory size in bytes.");
		text_printf(t, "process_resident_memory_bytes %llu\n", rss);
	}
	metric_head(t, "process_start_time_seconds", "gauge",
	            "Start time of the process since unix epoch in seconds.");
	text_printf(t, "process_start_time_seconds %.3f\n", start_time);
}
