/*
 * sdnotify — systemd's readiness protocol (sd_notify(3)), written here: one
 * datagram "KEY=VALUE\n..." to the unix socket $NOTIFY_SOCKET names (a path,
 * or "@name" for the abstract namespace). Without NOTIFY_SOCKET every call
 * does nothing. Never blocks (MSG_DONTWAIT); a failure is logged once.
 * From the main thread only.
 */
#ifndef IMAPMUX_SDNOTIFY_H
#define IMAPMUX_SDNOTIFY_H

/* Read NOTIFY_SOCKET (and drop it from the environment, so nothing started
 * later inherits it). Call once, early. */
void sdnotify_init(void);

/* Send one message built like printf. */
void sdnotify(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif
