/*
 * log — see log.h. Each line is built whole in a bounded buffer and leaves
 * in one write(2) or send(2), so lines from several worker threads never
 * interleave and a slow reader costs a dropped line, never a stalled worker.
 *
 *   log_msg / log_fields -> line_build (prefix by destination, body by
 *   format, every byte from the network made printable) -> stderr | syslog
 *
 * The destination and format are atomics read on every line; the syslog
 * socket (its fd and path) is the one shared state, under a mutex held only
 * for a non-blocking send or connect.
 */
#include "log.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define LINE_SIZE       2048
#define LINE_TAIL       3 /* kept for the closing "}\n" */
#define SYSLOG_FACILITY 2 /* mail (RFC 5424 6.2.1) */
#define RETRY_SECS      1

static _Atomic int cur_level = LOG_LVL_INFO;
static _Atomic int cur_format = LOG_FMT_TEXT;
static _Atomic int cur_target = LOG_TO_STDERR;
static _Atomic bool under_journal;

static const char *const level_names[] = {"error", "warn", "info", "debug"};
static const char *const format_names[] = {"text", "json"};
static const char *const target_names[] = {"stderr", "syslog"};
/* sd-daemon(3) / syslog severities: err, warning, info, debug. */
static const int level_severity[] = {3, 4, 6, 7};

static struct {
	pthread_mutex_t mu;
	int fd; /* connected datagram socket, or -1 */
	char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
	time_t last_try; /* last failed connect (retried after RETRY_SECS) */
} sl = {PTHREAD_MUTEX_INITIALIZER, -1, LOG_SOCKET_DEFAULT, 0};

void log_set_level(enum log_level lvl)
{
	atomic_store(&cur_level, (int)lvl);
}

enum log_level log_get_level(void)
{
	return (enum log_level)atomic_load(&cur_level);
}

static int keyword(const char *s, const char *const *names, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		if (strcasecmp(s, names[i]) == 0)
			return (int)i;
	}
	return -1;
}

int log_level_parse(const char *s, enum log_level *lvl_r)
{
	int i = keyword(s, level_names, sizeof(level_names) / sizeof(level_names[0]));

	if (i < 0)
		return -1;
	*lvl_r = (enum log_level)i;
	return 0;
}

int log_format_parse(const char *s, enum log_format *fmt_r)
{
	int i = keyword(s, format_names, sizeof(format_names) / sizeof(format_names[0]));

	if (i < 0)
		return -1;
	*fmt_r = (enum log_format)i;
	return 0;
}

int log_target_parse(const char *s, enum log_target *to_r)
{
	int i = keyword(s, target_names, sizeof(target_names) / sizeof(target_names[0]));

	if (i < 0)
		return -1;
	*to_r = (enum log_target)i;
	return 0;
}

/* systemd sets JOURNAL_STREAM=DEV:INO for the stream it connected to fd 2
 * (systemd.exec(5)); fd 2 may have been redirected since. */
static bool stderr_is_journal(void)
{
	const char *js = getenv("JOURNAL_STREAM");
	unsigned long long dev, ino;
	struct stat st;
	char end;

	if (js == NULL || sscanf(js, "%llu:%llu%c", &dev, &ino, &end) != 2)
		return false;
	if (fstat(STDERR_FILENO, &st) < 0)
		return false;
	return (unsigned long long)st.st_dev == dev && (unsigned long long)st.st_ino == ino;
}

void log_configure(enum log_format fmt, enum log_target to, const char *socket_path)
{
	const char *path = socket_path != NULL ? socket_path : LOG_SOCKET_DEFAULT;

	pthread_mutex_lock(&sl.mu);
	if (strcmp(path, sl.path) != 0 || to != LOG_TO_SYSLOG) {
		if (sl.fd >= 0)
			close(sl.fd);
		sl.fd = -1;
		sl.last_try = 0;
		snprintf(sl.path, sizeof(sl.path), "%s", path);
	}
	pthread_mutex_unlock(&sl.mu);
	atomic_store(&under_journal, stderr_is_journal());
	atomic_store(&cur_format, (int)fmt);
	atomic_store(&cur_target, (int)to);
}

/* ---- building a line ---------------------------------------------------- */

struct out {
	char *p;
	size_t n, cap; /* cap: LINE_SIZE less LINE_TAIL */
	bool full;     /* something did not fit */
};

static void out_raw(struct out *o, const char *s, size_t len)
{
	if (o->full || o->n + len > o->cap) {
		o->full = true;
		return;
	}
	memcpy(o->p + o->n, s, len);
	o->n += len;
}

static void out_str(struct out *o, const char *s)
{
	out_raw(o, s, strlen(s));
}

/* Length of the valid UTF-8 sequence at s (first byte >= 0x80), or 0. */
static size_t utf8_len(const unsigned char *s)
{
	size_t len;
	uint32_t cp;

	if (s[0] >= 0xc2 && s[0] <= 0xdf)
		len = 2, cp = s[0] & 0x1fu;
	else if (s[0] >= 0xe0 && s[0] <= 0xef)
		len = 3, cp = s[0] & 0x0fu;
	else if (s[0] >= 0xf0 && s[0] <= 0xf4)
		len = 4, cp = s[0] & 0x07u;
	else
		return 0;
	for (size_t i = 1; i < len; i++) {
		if ((s[i] & 0xc0) != 0x80)
			return 0;
		cp = cp << 6 | (s[i] & 0x3fu);
	}
	if ((len == 3 && (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff))) ||
	    (len == 4 && (cp < 0x10000 || cp > 0x10ffff)))
		return 0;
	return len;
}

/*
 * Copy s, never a control byte (they become '?'). esc: put a backslash
 * before '"' and '\'. json: bytes that are not UTF-8 become '?' too. A unit
 * that does not fit stops the copy, whole: no escape or character is cut.
 */
static void out_text(struct out *o, const char *s, bool esc, bool json, size_t keep)
{
	const unsigned char *u = (const unsigned char *)s;

	while (*u != '\0' && !o->full) {
		char unit[4];
		size_t len = 1;

		if (*u < 0x20 || *u == 0x7f) {
			unit[0] = '?';
		} else if (esc && (*u == '"' || *u == '\\')) {
			unit[0] = '\\', unit[1] = (char)*u, len = 2;
		} else if (json && *u >= 0x80) {
			size_t k = utf8_len(u);
			if (k == 0)
				unit[0] = '?';
			else
				memcpy(unit, u, k), len = k;
		} else {
			unit[0] = (char)*u;
		}
		if (o->n + len + keep > o->cap) {
			o->full = true;
			break;
		}
		memcpy(o->p + o->n, unit, len);
		o->n += len;
		u += json && *u >= 0x80 && len > 1 ? len : 1;
	}
}

/* A JSON string: always closed, cut short if need be. */
static void out_json_str(struct out *o, const char *s)
{
	if (o->full || o->n + 2 > o->cap) {
		o->full = true;
		return;
	}
	o->p[o->n++] = '"';
	out_text(o, s, true, true, 1);
	o->p[o->n++] = '"';
}

static bool needs_quotes(const char *v)
{
	if (*v == '\0')
		return true;
	for (; *v != '\0'; v++) {
		if (*v == ' ' || *v == '"' || *v == '=' || *v == '\\')
			return true;
	}
	return false;
}

/* Fields that do not fit are left out, whole, from the first one on. */
static void out_fields(struct out *o, bool json, const struct log_field *f, size_t n)
{
	for (size_t i = 0; i < n && !o->full; i++) {
		size_t mark = o->n;
		const char *v = f[i].val != NULL ? f[i].val : "";

		if (json) {
			out_str(o, ",");
			out_json_str(o, f[i].key);
			out_str(o, ":");
			if (f[i].num && *v != '\0')
				out_text(o, v, true, true, 0);
			else
				out_json_str(o, v);
		} else {
			if (i > 0)
				out_str(o, " ");
			out_text(o, f[i].key, false, false, 0);
			out_str(o, "=");
			if (needs_quotes(v)) {
				out_str(o, "\"");
				out_text(o, v, true, false, 1);
				out_str(o, "\"");
			} else {
				out_text(o, v, false, false, 0);
			}
		}
		if (o->full)
			o->n = mark;
	}
}

/*
 * The whole line, "\n" included, into line[LINE_SIZE]. *body_r: where the
 * part after the syslog header starts (what stderr shows when syslog fails).
 */
static size_t line_build(char *line, enum log_level lvl, const char *msg, const struct log_field *f,
                         size_t n, size_t *body_r)
{
	struct out o = {.p = line, .cap = LINE_SIZE - LINE_TAIL};
	bool json = atomic_load(&cur_format) == LOG_FMT_JSON;
	bool to_syslog = atomic_load(&cur_target) == LOG_TO_SYSLOG;
	bool journal = !to_syslog && atomic_load(&under_journal);
	char stamp[40];
	struct timespec ts;
	struct tm tm;
	int r;

	*body_r = 0;
	clock_gettime(CLOCK_REALTIME, &ts);
	if (to_syslog) {
		/* RFC 3164 4.1, as syslog(3) writes it to /dev/log. */
		char when[24];
		localtime_r(&ts.tv_sec, &tm);
		strftime(when, sizeof(when), "%b %e %H:%M:%S", &tm);
		r = snprintf(stamp, sizeof(stamp),
		             "<%d>%s imapmux[%ld]: ", SYSLOG_FACILITY * 8 + level_severity[lvl],
		             when, (long)getpid());
		out_raw(&o, stamp, r > 0 ? (size_t)r : 0);
		*body_r = o.n;
	} else if (journal) {
		r = snprintf(stamp, sizeof(stamp), "<%d>", level_severity[lvl]);
		out_raw(&o, stamp, r > 0 ? (size_t)r : 0);
	}
	gmtime_r(&ts.tv_sec, &tm);
	size_t k = strftime(stamp, sizeof(stamp), "%Y-%m-%dT%H:%M:%S", &tm);
	snprintf(stamp + k, sizeof(stamp) - k, ".%03ldZ", ts.tv_nsec / 1000000);
	if (json) {
		out_str(&o, "{\"ts\":\"");
		out_str(&o, stamp);
		out_str(&o, "\",\"level\":\"");
		out_str(&o, level_names[lvl]);
		out_str(&o, "\",\"msg\":");
		out_json_str(&o, msg);
		o.full = false; /* a cut message still gets its fields' room check */
		out_fields(&o, true, f, n);
		line[o.n++] = '}';
	} else {
		if (!to_syslog && !journal) {
			out_str(&o, stamp);
			out_str(&o, " ");
			out_str(&o, level_names[lvl]);
			out_str(&o, " ");
		}
		if (f == NULL)
			out_text(&o, msg, false, false, 0);
		else
			out_fields(&o, false, f, n);
	}
	line[o.n++] = '\n';
	return o.n;
}

/* ---- sending it ---------------------------------------------------------- */

static int syslog_connect_locked(void)
{
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	time_t now = time(NULL);
	int fd;

	if (sl.last_try != 0 && now - sl.last_try < RETRY_SECS)
		return -1;
	fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0)
		goto fail;
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", sl.path);
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0)
		goto fail;
	sl.fd = fd;
	sl.last_try = 0;
	return 0;
fail:
	if (fd >= 0)
		close(fd);
	sl.last_try = now;
	return -1;
}

/* True when the line went out or was dropped because the reader is full. */
static bool syslog_send(const char *line, size_t n)
{
	bool sent = false;

	pthread_mutex_lock(&sl.mu);
	/* Twice: a socket that went away (syslogd restarted) is reopened at once. */
	for (int i = 0; i < 2 && !sent; i++) {
		if (sl.fd < 0 && syslog_connect_locked() < 0)
			break;
		if (send(sl.fd, line, n, MSG_DONTWAIT | MSG_NOSIGNAL) >= 0 || errno == EAGAIN ||
		    errno == EWOULDBLOCK || errno == ENOBUFS || errno == EMSGSIZE) {
			sent = true;
			break;
		}
		close(sl.fd);
		sl.fd = -1;
	}
	pthread_mutex_unlock(&sl.mu);
	return sent;
}

static void log_emit(enum log_level lvl, const char *msg, const struct log_field *f, size_t n)
{
	char line[LINE_SIZE];
	size_t body;
	size_t len = line_build(line, lvl, msg, f, n, &body);

	if (atomic_load(&cur_target) == LOG_TO_SYSLOG && syslog_send(line, len))
		return;
	ssize_t w = write(STDERR_FILENO, line + body, len - body);
	(void)w;
}

void log_vmsg(enum log_level lvl, const char *fmt, va_list ap)
{
	char msg[LINE_SIZE];

	if (!log_enabled(lvl))
		return;
	vsnprintf(msg, sizeof(msg), fmt, ap);
	log_emit(lvl, msg, NULL, 0);
}

void log_msg(enum log_level lvl, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	log_vmsg(lvl, fmt, ap);
	va_end(ap);
}

void log_fields(enum log_level lvl, const char *msg, const struct log_field *f, size_t n)
{
	if (!log_enabled(lvl))
		return;
	log_emit(lvl, msg, f, n);
}
