/*
 * cryptpool — password verification (common/pwhash) on a few threads of
 * its own, so that no event loop ever spends the milliseconds crypt costs.
 *
 * main starts the pool once (cryptpool_start) and stops it at exit
 * (cryptpool_stop). Each worker opens a crypt_port on its loop; a session
 * submits (crypt_verify) and gets its answer later, as a callback on that
 * same loop, or cancels (crypt_cancel) when it closes first. A login with
 * no hash to check (unknown user) submits crypt_verify_dummy instead: same
 * cost, never a match, so that answer times do not tell which users exist.
 * See cryptpool.c for the states and the locking.
 */
#ifndef IMAPMUX_CRYPTPOOL_H
#define IMAPMUX_CRYPTPOOL_H

#include <stddef.h>

struct ev_loop;

/* One per worker loop: an ev_async and the list of finished jobs. */
struct crypt_port;
/* One verification, from crypt_verify until its callback or crypt_cancel. */
struct crypt_job;

/* Jobs waiting for a pool thread, across all ports; more are refused. */
#define CRYPTPOOL_QUEUE_MAX 10000
/* Most threads cryptpool_start accepts. */
#define CRYPTPOOL_THREADS_MAX 256

/* result: 1 match, 0 mismatch, -1 cannot verify (see pwhash_verify) or pool stopped. */
typedef void crypt_done_cb(void *arg, int result);

/*
 * Start nthreads (1..CRYPTPOOL_THREADS_MAX) pool threads, with every
 * asynchronous signal blocked. Call once, from the main thread, before
 * anything is submitted; again only after cryptpool_stop. Each thread may
 * hold a verification's memory (yescrypt at Debian's default cost: 16 MiB).
 * Makes the setting dummies use until a real hash is verified
 * (pwhash_default_setting). Returns 0, or -1 with errno set (EINVAL,
 * EALREADY, or pwhash_default_setting's or pthread_create's).
 */
__attribute__((warn_unused_result)) int cryptpool_start(unsigned nthreads);

/*
 * From the thread that started the pool: refuse new jobs, let every pool
 * thread finish the verification it is running (joins them, so this waits
 * up to one verification), then answer every job still queued with -1.
 * Answers go to their ports as usual: a port whose loop still runs gets its
 * callbacks; crypt_port_destroy frees whatever was not delivered. No-op if
 * the pool is not running.
 */
void cryptpool_stop(void);

/*
 * Open a port on loop. Call in the thread that runs loop; every other
 * crypt_port and crypt_job call on the port must come from that thread.
 * The port keeps loop alive (ev_ref) while, and only while, it has jobs
 * outstanding. Returns NULL on OOM or a NULL loop.
 */
__attribute__((warn_unused_result)) struct crypt_port *crypt_port_new(struct ev_loop *loop);

/*
 * Close *pp (may be NULL) and set it to NULL, in the port's thread, before
 * its loop is destroyed. Every job of the port is cancelled (no callback;
 * freed now, or by its pool thread when the running verification ends).
 * Safe inside one of the port's own callbacks.
 */
void crypt_port_destroy(struct crypt_port **pp);

/*
 * Copy password[0..len) (NULL allowed when len is 0) and hash
 * (NUL-terminated) and queue the verification. cb(arg, result) runs later,
 * on the port's loop, never inside crypt_verify; exactly once, unless the
 * job is cancelled or the port destroyed first. The job is freed before cb
 * runs: clear your handle first thing in cb. A password or hash longer
 * than pwhash accepts is not copied and answers -1.
 * Returns the job, or NULL with errno set, and then no callback ever:
 * EINVAL (NULL port, cb or hash), ENOMEM, EAGAIN (CRYPTPOOL_QUEUE_MAX jobs
 * queued), ESHUTDOWN (pool not running).
 */
__attribute__((warn_unused_result)) struct crypt_job *crypt_verify(struct crypt_port *port,
                                                                   const char *password, size_t len,
                                                                   const char *hash,
                                                                   crypt_done_cb *cb, void *arg);

/*
 * The same as crypt_verify, for a login that has no hash to verify the
 * password against (unknown user, unusable hash): the password is hashed
 * with the setting (scheme, cost, salt: see pwhash_setting) of the real
 * hash most recently verified by the pool (0 or 1), or before any, with
 * the one cryptpool_start made, and the result thrown away. cb gets 0,
 * even for a password that some hash would match; -1 only if crypt could
 * not run (the pool stopped first, out of memory). So its answer comes
 * about as late as a wrong password's for users of the same scheme and
 * cost. The pool keeps only that setting, never a hash. Same errors.
 * (crypt_verify, for its part, spends a dummy's cost too on a hash it
 * cannot verify: -1 comes no sooner than 0.)
 */
__attribute__((warn_unused_result)) struct crypt_job *
crypt_verify_dummy(struct crypt_port *port, const char *password, size_t len, crypt_done_cb *cb,
                   void *arg);

/*
 * The caller no longer wants the answer (its session is closing): cb will
 * not be called, the password copy is wiped now (or, while a pool thread is
 * hashing it, the moment crypt returns), and the job is freed whenever the
 * pool is done with it. job may be NULL. Only from the port's thread, only
 * before cb has run, at most once: afterwards the handle is invalid.
 */
void crypt_cancel(struct crypt_job *job);

#endif
