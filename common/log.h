/*
 * log — leveled logging to stderr, one line per call, safe from any thread.
 *
 * Lines look like "2026-11-22T03:04:05.123Z info S-12 alice@127.0.0.1:5555 login ok".
 * Callers name the connection themselves; nothing here knows about sessions.
 * Credentials are never passed to these functions (see proxy/session.c).
 */
#ifndef IMAPMUX_LOG_H
#define IMAPMUX_LOG_H

#include <stdarg.h>

enum log_level {
	LOG_LVL_ERROR = 0,
	LOG_LVL_WARN,
	LOG_LVL_INFO,
	LOG_LVL_DEBUG,
};

void log_set_level(enum log_level lvl);
enum log_level log_get_level(void);

/* Parse "error" | "warn" | "info" | "debug". Returns 0 or -1. */
int log_level_parse(const char *s, enum log_level *lvl_r);

void log_msg(enum log_level lvl, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void log_vmsg(enum log_level lvl, const char *fmt, va_list ap)
    __attribute__((format(printf, 2, 0)));

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
