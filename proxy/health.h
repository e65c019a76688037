/*
 * health — active health checks of the backends, on a thread of their own.
 *
 * Every check_interval, per backend: connect, wait for the greeting (with
 * TLS, STARTTLS and CAPABILITY as its tls setting requires), send LOGOUT,
 * close; the whole probe bounded by check_timeout. check_fall failures in a
 * row make an up backend down, check_rise successes in a row make a down
 * backend up again; each transition is logged. Backends start up, so that
 * a fresh start refuses no one; a backend with check_interval = 0 is never
 * checked and always up.
 *
 * The verdicts live in rt->backend_up[i] (see runtime.h): workers read them
 * with runtime_backend_up(), a relaxed atomic load, with no lock and without
 * including this header.
 *
 * Called from the main thread only: health_start once, health_reload after
 * each successful SIGHUP, health_stop at exit. The thread takes no signals.
 */
#ifndef IMAPMUX_HEALTH_H
#define IMAPMUX_HEALTH_H

#include <stdbool.h>
#include <stddef.h>

#include "runtime.h"

/*
 * Start checking rt's backends on a new thread. Takes a reference on rt
 * (the caller keeps its own). Returns 0, or -1 (logged) when the thread or
 * its loop cannot be made, or when health checks already run.
 */
__attribute__((warn_unused_result)) int health_start(struct runtime *rt);

/*
 * Check rt's backends from now on, in place of the previous runtime's:
 * each backend of rt inherits the up/down state (and the current run of
 * successes or failures) of the backend of the same NAME, if there was
 * one; a new name starts up. Takes a reference on rt and drops the one on
 * the previous runtime once the thread has switched. The state is copied
 * here at once and again by the thread when it switches, so call this
 * before handing rt to the workers and they never see a down backend as
 * up. A no-op when health checks do not run.
 */
void health_reload(struct runtime *rt);

/* Stop the thread and free everything it holds (safe if never started). */
void health_stop(void);

#endif
