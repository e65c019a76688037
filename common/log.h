/*
 * log — leveled logging, one line per call, safe from any thread.
 *
 * Lines look like "2026-11-22T03:04:05.123Z info S-12 alice@127.0.0.1:5555 login ok".
 * Callers name the connection themselves; nothing here knows about sessions.
 * Credentials are never passed to these functions (see proxy/session.c).
 *
 * Where a line goes and how it reads (log_configure, at start and on reload):
 *   text   "TS LEVEL MSG" on stderr; fields as key=value (quoted when needed)
 *   json   {"ts":..,"level":..,"msg":..,KEY:VALUE..} one object per line
 *   stderr under systemd (JOURNAL_STREAM names fd 2): "<N>" sd-daemon(3)
 *          priority prefix instead of our own time stamp
 *   syslog RFC 3164 lines ("<PRI>Mmm dd hh:mm:ss imapmux[PID]: ...",
 *          facility mail) sent without blocking to a unix datagram socket
 *          (/dev/log by default); reconnected when it goes away, stderr
 *          while it cannot be reached
 */
#ifndef IMAPMUX_LOG_H
#define IMAPMUX_LOG_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>

enum log_level {
	LOG_LVL_ERROR = 0,
	LOG_LVL_WARN,
	LOG_LVL_INFO,
	LOG_LVL_DEBUG,
};

enum log_format {
	LOG_FMT_TEXT = 0,
	LOG_FMT_JSON,
};

enum log_target {
	LOG_TO_STDERR = 0,
	LOG_TO_SYSLOG,
};

#define LOG_SOCKET_DEFAULT "/dev/log"

/* One key=value of a structured line. num: val is a number (JSON without quotes). */
struct log_field {
	const char *key;
	const char *val;
	bool num;
};

void log_set_level(enum log_level lvl);
enum log_level log_get_level(void);

/* Parse "error" | "warn" | "info" | "debug". Returns 0 or -1. */
int log_level_parse(const char *s, enum log_level *lvl_r);
/* Parse "text" | "json". Returns 0 or -1. */
int log_format_parse(const char *s, enum log_format *fmt_r);
/* Parse "stderr" | "syslog". Returns 0 or -1. */
int log_target_parse(const char *s, enum log_target *to_r);

/*
 * Set format and destination (socket_path: the syslog socket, NULL for
 * LOG_SOCKET_DEFAULT; copied). Also looks at JOURNAL_STREAM again. Safe
 * while other threads log; a syslog socket that cannot be reached now is
 * tried again later (at most once a second), not an error.
 */
void log_configure(enum log_format fmt, enum log_target to, const char *socket_path);

void log_msg(enum log_level lvl, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void log_vmsg(enum log_level lvl, const char *fmt, va_list ap)
    __attribute__((format(printf, 2, 0)));
/* A structured line: msg names it (JSON's "msg"); text shows the fields only. */
void log_fields(enum log_level lvl, const char *msg, const struct log_field *f, size_t n);

#define log_enabled(lvl) ((lvl) <= log_get_level())
#define log_error(...)   log_msg(LOG_LVL_ERROR, __VA_ARGS__)
#define log_warn(...)    log_msg(LOG_LVL_WARN, __VA_ARGS__)
#define log_info(...)                                                                              \
	do {                                                                                       \
		if (log_enabled(LOG_LVL_INFO))                                                     \
			log_msg(LOG_LVL_INFO, __VA_ARGS__);                                        \
	} while (0)
#define log_debug(...)                                                                             \
	do {                                                                                       \
		if (log_enabled(LOG_LVL_DEBUG))                                                    \
			log_msg(LOG_LVL_DEBUG, __VA_ARGS__);                                       \
	} while (0)

#endif
