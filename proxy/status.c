/*
 * status — GET /status: what an operator reads at a glance, as one JSON
 * object, rendered on the stats thread (stats.c owns the HTTP side):
 *
 *   counters[0..n) --relaxed loads, summed--> status_render --> text
 *
 *   {"instance":{"version","pid","started","uptime","workers"},
 *    "sessions":{"total","logged_in","parked"}}
 *
 * Only numbers and fixed strings so far: nothing a client controls reaches
 * this text, so nothing needs escaping yet. Like /metrics, the document is
 * not a consistent snapshot across workers: each counter is read once.
 */
#include "status.h"

#include <stdatomic.h>
#include <stddef.h>
#include <time.h>
#include <unistd.h>

#include "counters.h"
#include "metrics.h"

#ifndef IMAPMUX_VERSION
#define IMAPMUX_VERSION "0.1.0" /* as in sess.h */
#endif

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

void status_render(struct text *t, const struct stats *const *counters, unsigned n,
                   double start_time)
{
	struct timespec now;
	double uptime;

	clock_gettime(CLOCK_REALTIME, &now);
	uptime = (double)now.tv_sec + (double)now.tv_nsec / 1e9 - start_time;
	text_printf(t,
	            "{\"instance\":{\"version\":\"%s\",\"pid\":%ld,\"started\":%.0f,"
	            "\"uptime\":%.0f,\"workers\":%u},",
	            IMAPMUX_VERSION, (long)getpid(), start_time, uptime < 0 ? 0. : uptime, n);
	text_printf(t, "\"sessions\":{\"total\":%ld,\"logged_in\":%ld,\"parked\":%ld}}\n",
	            gauge_sum(counters, n, offsetof(struct stats, sessions_active)),
	            gauge_sum(counters, n, offsetof(struct stats, sessions_proxying)),
	            gauge_sum(counters, n, offsetof(struct stats, sessions_parked)));
}

/* Rendered with textContent only: nothing from /status is parsed as HTML. */
const char status_page_html[] =
    "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
    "<meta name=\"viewport\" content=\"width=device-width\">"
    "<title>imapmux status</title><style>"
    "body{font:15px/1.4 system-ui,sans-serif;margin:2em;color:#222;background:#f6f7f9}"
    "h1{font-size:1.4em;margin:0 0 .8em}"
    ".cards{display:flex;gap:1em;flex-wrap:wrap}"
    ".card{background:#fff;border:1px solid #dde;border-radius:8px;padding:1em 1.4em;"
    "min-width:9em}"
    ".card b{display:block;font-size:1.8em}.card span{color:#667}"
    "#err{color:#b00020;margin-top:1em}"
    "</style></head><body>"
    "<h1>imapmux <span id=\"ver\"></span></h1>"
    "<noscript><p>This page needs JavaScript to show the instance's state; "
    "the same data is at <a href=\"/status\">/status</a> (JSON).</p></noscript>"
    "<div class=\"cards\">"
    "<div class=\"card\"><b id=\"total\">-</b><span>sessions</span></div>"
    "<div class=\"card\"><b id=\"logged_in\">-</b><span>logged in</span></div>"
    "<div class=\"card\"><b id=\"parked\">-</b><span>parked</span></div>"
    "<div class=\"card\"><b id=\"workers\">-</b><span>workers</span></div>"
    "<div class=\"card\"><b id=\"uptime\">-</b><span>uptime</span></div>"
    "</div><div id=\"err\"></div><script>\n"
    "function dur(s){var d=Math.floor(s/86400),h=Math.floor(s%86400/3600),"
    "m=Math.floor(s%3600/60);return (d?d+'d ':'')+(d||h?h+'h ':'')+m+'m '+(s%60)+'s';}\n"
    "function set(id,v){document.getElementById(id).textContent=v;}\n"
    "function load(){fetch('/status',{cache:'no-store'}).then(function(r){return r.json();})"
    ".then(function(j){set('ver',j.instance.version+' (pid '+j.instance.pid+')');"
    "set('total',j.sessions.total);set('logged_in',j.sessions.logged_in);"
    "set('parked',j.sessions.parked);set('workers',j.instance.workers);"
    "set('uptime',dur(j.instance.uptime));set('err','');})"
    ".catch(function(e){set('err','cannot read /status: '+e);});}\n"
    "load();setInterval(load,3000);\n</script></body></html>\n";
