/*
 * sdnotify — see sdnotify.h. The protocol (sd_notify(3), systemd.service(5)
 * Type=notify and Type=notify-reload): READY=1 once the service serves,
 * RELOADING=1 with MONOTONIC_USEC=<CLOCK_MONOTONIC in us> when a reload
 * begins and READY=1 when it is over, STOPPING=1 when the stop begins,
 * STATUS=<text> for `systemctl status`.
 */
#include "sdnotify.h"

#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "log.h"

static struct {
	struct sockaddr_un sa;
	socklen_t len; /* 0: no NOTIFY_SOCKET */
	bool warned;
} nt;

void sdnotify_init(void)
{
	const char *p = getenv("NOTIFY_SOCKET");
	size_t n;

	if (p == NULL || (p[0] != '/' && p[0] != '@'))
		return;
	n = strlen(p);
	if (n >= sizeof(nt.sa.sun_path)) {
		log_warn("NOTIFY_SOCKET too long (%zu bytes): not telling systemd", n);
		return;
	}
	nt.sa.sun_family = AF_UNIX;
	memcpy(nt.sa.sun_path, p, n);
	if (p[0] == '@')
		nt.sa.sun_path[0] = '\0'; /* abstract: the name is not NUL-terminated */
	nt.len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n + (p[0] == '/'));
	unsetenv("NOTIFY_SOCKET");
}

void sdnotify(const char *fmt, ...)
{
	char msg[512];
	va_list ap;
	int fd, n;

	if (nt.len == 0)
		return;
	va_start(ap, fmt);
	n = vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	if (n < 0 || (size_t)n >= sizeof(msg))
		return;
	fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (fd >= 0 && sendto(fd, msg, (size_t)n, MSG_DONTWAIT | MSG_NOSIGNAL,
	                      (struct sockaddr *)&nt.sa, nt.len) == n) {
		close(fd);
		return;
	}
	if (!nt.warned)
		log_warn("telling systemd (NOTIFY_SOCKET) failed: %s", strerror(errno));
	nt.warned = true;
	if (fd >= 0)
		close(fd);
}
