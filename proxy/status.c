/*
 * status — GET /status: what an operator reads at a glance, as one JSON
 * object, rendered on the stats thread (stats.c owns the HTTP side):
 *
 *   counters[0..n) --relaxed loads, summed--+
 *   runtime_current() (names, addresses) ---+--> status_render --> text
 *
 *   {"instance":{"version","pid","started","uptime","workers","state"},
 *    "sessions":{"total","logged_in","parked","by_state":{...}},
 *    "redis":{"configured","address","up","workers_up"},
 *    "listeners":[{"name","address","tls"}],
 *    "backends":[{"name","address","health","drained","connections":{...},
 *                 "pool":{"idle","opening","in_use","waiters"},"logins":{...}}]}
 *
 * Every string that comes from the configuration (names, addresses) goes
 * through json_string: quotes, backslashes and control bytes escaped, and
 * bytes that are not UTF-8 replaced, so the document is always valid JSON.
 * Like /metrics, it is not a consistent snapshot across workers: each
 * counter is read once.
 */
#include "status.h"

#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "counters.h"
#include "metrics.h"
#include "runtime.h"

#ifndef IMAPMUX_VERSION
#define IMAPMUX_VERSION "0.1.0" /* as in sess.h */
#endif

/* The sum over the workers of the atomic_long at off in struct stats. */
static long gauge_sum(const struct stats *const *counters, unsigned n, size_t off)
{
	long sum = 0;

	for (unsigned i = 0; i < n; i++) {
		const atomic_long *g = (const atomic_long *)((const char *)counters[i] + off);

		sum += atomic_load_explicit(g, memory_order_relaxed);
	}
	/* Each worker's gauge is exact for itself; the sum of loads made at
	 * different moments can dip below zero for an instant. */
	return sum < 0 ? 0 : sum;
}

#define STAT_OFF(field) offsetof(struct stats, field)
/* Where field of slot's struct stats_backend is in a struct stats. */
#define BK_OFF(slot, field)                                                                        \
	(offsetof(struct stats, bk) + (size_t)(slot) * sizeof(struct stats_backend) +              \
	 offsetof(struct stats_backend, field))

/* The length of the well-formed UTF-8 sequence at p (at most n bytes), or 0. */
static size_t utf8_len(const unsigned char *p, size_t n)
{
	size_t len;
	unsigned long cp;

	if (p[0] < 0x80)
		return 1;
	if (p[0] >= 0xc2 && p[0] <= 0xdf)
		len = 2, cp = p[0] & 0x1f;
	else if (p[0] >= 0xe0 && p[0] <= 0xef)
		len = 3, cp = p[0] & 0x0f;
	else if (p[0] >= 0xf0 && p[0] <= 0xf4)
		len = 4, cp = p[0] & 0x07;
	else
		return 0;
	if (len > n)
		return 0;
	for (size_t i = 1; i < len; i++) {
		if ((p[i] & 0xc0) != 0x80)
			return 0;
		cp = cp << 6 | (p[i] & 0x3f);
	}
	/* overlong forms, surrogates, past U+10FFFF */
	if ((len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000) || cp > 0x10ffff ||
	    (cp >= 0xd800 && cp <= 0xdfff))
		return 0;
	return len;
}

/* v as a JSON string, quotes included (RFC 8259 section 7): '"', '\' and
 * control bytes escaped, '<' and '>' too (the page never parses it as HTML,
 * but a browser shown the JSON itself may); ill-formed UTF-8 becomes U+FFFD. */
static void json_string(struct text *t, const char *v)
{
	const unsigned char *p = (const unsigned char *)v;
	size_t n = strlen(v);

	text_append(t, "\"", 1);
	while (n > 0) {
		size_t len = utf8_len(p, n);

		if (len == 0) {
			text_append(t, "\\ufffd", 6);
			len = 1;
		} else if (*p == '"' || *p == '\\') {
			text_printf(t, "\\%c", *p);
		} else if (*p < 0x20 || *p == 0x7f || *p == '<' || *p == '>') {
			text_printf(t, "\\u%04x", *p);
		} else {
			text_append(t, p, len);
		}
		p += len;
		n -= len;
	}
	text_append(t, "\"", 1);
}

static const char *tls_name(enum cfg_tls tls)
{
	switch (tls) {
	case CFG_TLS_IMPLICIT:
		return "implicit";
	case CFG_TLS_STARTTLS:
		return "starttls";
	case CFG_TLS_NONE:
		break;
	}
	return "none";
}

static void render_backend(struct text *t, const struct stats *const *counters, unsigned n,
                           const struct runtime *rt, size_t i)
{
	const struct cfg_backend *b = &rt->cfg->backends[i];
	unsigned slot = rt->backend_slot[i];
	long total = 0;

	text_append(t, "{\"name\":", 8);
	json_string(t, b->name);
	text_append(t, ",\"address\":", 11);
	json_string(t, b->addr.text);
	text_printf(t, ",\"tls\":\"%s\",\"health\":\"%s\",\"drained\":%s,\"connections\":{",
	            tls_name(b->tls), runtime_backend_up(rt, i) ? "up" : "down",
	            gauge_sum(counters, n, BK_OFF(slot, drained)) > 0 ? "true" : "false");
	for (unsigned c = 0; c < STATS_CONN_N; c++) {
		long v = gauge_sum(counters, n, BK_OFF(slot, conns) + c * sizeof(atomic_long));

		total += v;
		text_printf(t, "\"%s\":%ld,", stats_conn_class_name(c), v);
	}
	long idle = gauge_sum(counters, n, BK_OFF(slot, pool_idle));
	long opening = gauge_sum(counters, n, BK_OFF(slot, pool_opening));
	long in_use = gauge_sum(counters, n, BK_OFF(slot, pool_total)) - idle - opening;
	text_printf(t,
	            "\"total\":%ld},\"pool\":{\"idle\":%ld,\"opening\":%ld,\"in_use\":%ld,"
	            "\"waiters\":%ld,\"min_idle\":%u,\"max\":%u},",
	            total, idle, opening, in_use < 0 ? 0 : in_use,
	            gauge_sum(counters, n, BK_OFF(slot, pool_waiters)), b->pool_min_idle,
	            b->pool_max);
	text_printf(t, "\"logins\":{\"ok\":%ld,\"auth_failed\":%ld,\"unavailable\":%ld}}",
	            gauge_sum(counters, n, BK_OFF(slot, logins_ok)),
	            gauge_sum(counters, n, BK_OFF(slot, logins_failed)),
	            gauge_sum(counters, n, BK_OFF(slot, logins_unavailable)));
}

void status_render(struct text *t, const struct stats *const *counters, unsigned n,
                   double start_time, bool draining)
{
	struct timespec now;
	double uptime;
	struct runtime *rt = runtime_current();
	long total = gauge_sum(counters, n, STAT_OFF(sessions_active));
	long proxying = gauge_sum(counters, n, STAT_OFF(sessions_proxying));
	long parked = gauge_sum(counters, n, STAT_OFF(sessions_parked));
	long pre = total - proxying - parked;

	clock_gettime(CLOCK_REALTIME, &now);
	uptime = (double)now.tv_sec + (double)now.tv_nsec / 1e9 - start_time;
	text_printf(t,
	            "{\"instance\":{\"version\":\"%s\",\"pid\":%ld,\"started\":%.0f,"
	            "\"uptime\":%.0f,\"workers\":%u,\"state\":\"%s\"},",
	            IMAPMUX_VERSION, (long)getpid(), start_time, uptime < 0 ? 0. : uptime, n,
	            draining ? "draining" : "accepting");
	/* logged_in: proxying with a backend connection; parked ones hold none. */
	text_printf(t,
	            "\"sessions\":{\"total\":%ld,\"logged_in\":%ld,\"parked\":%ld,"
	            "\"by_state\":{\"pre_login\":%ld,\"proxying\":%ld,\"parked\":%ld}},",
	            total, proxying, parked, pre < 0 ? 0 : pre, proxying, parked);
	if (rt != NULL && rt->cfg->has_redis) {
		long up = gauge_sum(counters, n, STAT_OFF(redis_up));

		text_append(t, "\"redis\":{\"configured\":true,\"address\":", 37);
		json_string(t, rt->cfg->redis_addr.text);
		text_printf(t, ",\"up\":%s,\"workers_up\":%ld},",
		            n > 0 && up >= (long)n ? "true" : "false", up);
	} else {
		text_printf(t, "\"redis\":{\"configured\":false,\"up\":false,\"workers_up\":0},");
	}
	text_append(t, "\"listeners\":[", 13);
	for (size_t i = 0; rt != NULL && i < rt->cfg->nlistens; i++) {
		const struct cfg_listen *l = &rt->cfg->listens[i];

		text_append(t, i > 0 ? ",{\"name\":" : "{\"name\":", i > 0 ? 9 : 8);
		json_string(t, l->name);
		text_append(t, ",\"address\":", 11);
		json_string(t, l->addr.text);
		text_printf(t, ",\"tls\":\"%s\",\"proxy_protocol\":%s}", tls_name(l->tls),
		            l->proxy_protocol ? "true" : "false");
	}
	text_append(t, "],\"backends\":[", 14);
	for (size_t i = 0; rt != NULL && i < rt->cfg->nbackends; i++) {
		if (i > 0)
			text_append(t, ",", 1);
		render_backend(t, counters, n, rt, i);
	}
	text_append(t, "]}\n", 3);
	runtime_unref(&rt);
}

/* Rendered with textContent only: nothing from /status is parsed as HTML. */
const char status_page_html[] =
    "<!DOCTYPE html>\n"
    "<html lang=\"en\"><head><meta charset=\"utf-8\">\n"
    "<meta name=\"viewport\" content=\"width=device-width\">\n"
    "<title>imapmux status</title><style>\n"
    "body{font:15px/1.4 system-ui,sans-serif;margin:2em;color:#222;background:#f6f7f9}\n"
    "h1{font-size:1.4em;margin:0 0 .8em}h2{font-size:1.1em;margin:1.4em 0 .5em}\n"
    ".cards{display:flex;gap:1em;flex-wrap:wrap}\n"
    ".card{background:#fff;border:1px solid #dde;border-radius:8px;padding:1em 1.4em;min-width:8em}\n"
    ".card b{display:block;font-size:1.8em}.card span{color:#667}\n"
    "table{border-collapse:collapse;background:#fff;border:1px solid #dde;min-width:40em}\n"
    "th,td{padding:.35em .8em;border-bottom:1px solid #eef;text-align:left}\n"
    "th{background:#eef0f4;font-weight:600}td.n{text-align:right;font-variant-numeric:tabular-nums}\n"
    ".up{background:#1e8e3e;color:#fff}.down{background:#c5221f;color:#fff}\n"
    ".badge{display:inline-block;padding:.1em .6em;border-radius:1em;font-weight:600}\n"
    ".draining{background:#e37400;color:#fff}.accepting{background:#1e8e3e;color:#fff}\n"
    ".off{background:#888;color:#fff}.card b.badge{font-size:1.2em;margin:.35em 0}\n"
    "#err{color:#b00020;margin-top:1em}\n"
    "</style></head><body>\n"
    "<h1>imapmux <span id=\"ver\"></span> <span id=\"state\" class=\"badge\"></span></h1>\n"
    "<noscript><p>This page needs JavaScript to show the instance's state; the same data is at <a href=\"/status\">/status</a> (JSON).</p></noscript>\n"
    "<div class=\"cards\">\n"
    "<div class=\"card\"><b id=\"total\">-</b><span>sessions</span></div>\n"
    "<div class=\"card\"><b id=\"pre_login\">-</b><span>before login</span></div>\n"
    "<div class=\"card\"><b id=\"logged_in\">-</b><span>proxying</span></div>\n"
    "<div class=\"card\"><b id=\"parked\">-</b><span>parked</span></div>\n"
    "<div class=\"card\"><b id=\"redis\" class=\"badge\">-</b><span>Redis link</span></div>\n"
    "<div class=\"card\"><b id=\"workers\">-</b><span>workers</span></div>\n"
    "<div class=\"card\"><b id=\"uptime\">-</b><span>uptime</span></div>\n"
    "</div>\n"
    "<h2>Backends</h2>\n"
    "<table id=\"backends\"><thead><tr><th>backend</th><th>address</th><th>health</th>\n"
    "<th>connections</th><th>in use</th><th>pool idle</th><th>pool in use</th><th>waiters</th>\n"
    "<th>logins ok</th><th>failed</th></tr></thead><tbody></tbody></table>\n"
    "<h2>Listeners</h2>\n"
    "<table id=\"listeners\"><thead><tr><th>listener</th><th>address</th><th>TLS</th>\n"
    "<th>PROXY protocol</th></tr></thead><tbody></tbody></table>\n"
    "<div id=\"err\"></div><script>\n"
    "function dur(s){var d=Math.floor(s/86400),h=Math.floor(s%86400/3600),m=Math.floor(s%3600/60);return (d?d+'d ':'')+(d||h?h+'h ':'')+m+'m '+(s%60)+'s';}\n"
    "function set(id,v,cls){var e=document.getElementById(id);e.textContent=v;if(cls!==undefined)e.className='badge '+cls;}\n"
    "function cell(tr,v,cls){var td=document.createElement('td');td.textContent=v;if(cls)td.className=cls;tr.appendChild(td);return td;}\n"
    "function rows(id,list,fill){var tb=document.querySelector('#'+id+' tbody');while(tb.firstChild)tb.removeChild(tb.firstChild);\n"
    "list.forEach(function(x){var tr=document.createElement('tr');fill(tr,x);tb.appendChild(tr);});}\n"
    "function load(){fetch('/status',{cache:'no-store'}).then(function(r){return r.json();}).then(function(j){\n"
    "set('ver',j.instance.version+' (pid '+j.instance.pid+')');\n"
    "set('state',j.instance.state,j.instance.state);\n"
    "set('total',j.sessions.total);set('pre_login',j.sessions.by_state.pre_login);\n"
    "set('logged_in',j.sessions.logged_in);set('parked',j.sessions.parked);\n"
    "set('redis',!j.redis.configured?'not used':j.redis.up?'up':'down',!j.redis.configured?'off':j.redis.up?'up':'down');\n"
    "set('workers',j.instance.workers);set('uptime',dur(j.instance.uptime));\n"
    "rows('backends',j.backends,function(tr,b){cell(tr,b.name);cell(tr,b.address);\n"
    "var h=cell(tr,'');var s=document.createElement('span');s.className='badge '+b.health;s.textContent=b.health;h.appendChild(s);\n"
    "if(b.drained){var d=document.createElement('span');d.className='badge draining';d.textContent='drained';h.appendChild(document.createTextNode(' '));h.appendChild(d);}\n"
    "cell(tr,b.connections.total,'n');cell(tr,b.connections.in_use,'n');cell(tr,b.pool.idle,'n');cell(tr,b.pool.in_use,'n');\n"
    "cell(tr,b.pool.waiters,'n');cell(tr,b.logins.ok,'n');cell(tr,b.logins.auth_failed+b.logins.unavailable,'n');});\n"
    "rows('listeners',j.listeners,function(tr,l){cell(tr,l.name);cell(tr,l.address);cell(tr,l.tls);cell(tr,l.proxy_protocol?'yes':'no');});\n"
    "set('err','');}).catch(function(e){set('err','cannot read /status: '+e);});}\n"
    "load();setInterval(load,3000);\n"
    "</script></body></html>\n";
