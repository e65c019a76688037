/*
 * cryptpool — pwhash_verify on pool threads, answers handed back to the
 * event loop that asked, through that loop's crypt_port.
 *
 *   port's thread (a worker loop)              pool threads (N)
 *
 *   crypt_verify --append--> pool.queue --pop--> QUEUED -> RUNNING
 *   crypt_verify_dummy       (FIFO, at most         pwhash_verify() or
 *                             CRYPTPOOL_QUEUE_MAX)  pwhash_dummy(), unlocked
 *                                                   wipe the password copy
 *   port_async_cb <--ev_async_send-- port->done <-- RUNNING -> DONE
 *     pop one job, free it, cb(arg, result); repeat
 *
 * Dummies (unknown users) must cost what a wrong password costs, and the
 * cost is set by the hashes in the store, so the pool follows them:
 * pool.setting is the setting (pwhash_setting: scheme, cost, salt; never
 * the hash) of the last real hash verified (answer 0 or 1), or, until the
 * first, a default one made by cryptpool_start. A dummy hashes its password
 * with it and answers 0. A real job that answers -1 (locked or foreign
 * hash, unusable password) then runs a dummy too: refusing at once would
 * tell "this user exists" just as well.
 *
 * Locking: one mutex, pool.lock, guards every list (pool.queue, each
 * port's done and jobs lists), every job field but the password bytes,
 * the pool counters and pool.setting (a pool thread copies it when it
 * takes a job and writes it back with the answer). The lists are
 * common/list.h rings, which know nothing of threads: every list_* call
 * in this file, reads (list_empty, list_first_entry) included, runs with
 * pool.lock held, but crypt_port_new's list_init of a port no other
 * thread can see yet. Critical sections are list operations, a free and at
 * most one ev_async_send (an eventfd write): never a hash, so a worker
 * loop waits on it for microseconds at worst. A single lock makes the
 * races below easy to reason about, and logins are far too rare for it to
 * be contended.
 *
 * Job states (job->state), and the lists a job is on (job->node,
 * job->port_node):
 *   QUEUED   node on pool.queue, port_node on its port's jobs list.
 *   RUNNING  taken by one pool thread, node on no list (port_node still on
 *            its port's jobs list). The thread alone reads secret[]
 *            (outside the lock), and wipes the password as soon as crypt
 *            returns. If cancelled meanwhile, it is on no list at all, has
 *            no port, and the thread frees it.
 *   DONE     result set, node on its port's done list, port_node on its
 *            jobs list, waiting for the port's loop.
 *
 * Invariants:
 *  - A job that is not cancelled has a live port. Cancel and port destroy
 *    unlink and free the job under the lock, or, if a pool thread is
 *    running it, set cancelled and job->port = NULL. So a pool thread,
 *    which looks at job->port only under the lock and only if !cancelled,
 *    never sees a destroyed port, and ev_async_send (made under the lock
 *    for exactly this reason) never targets one.
 *  - Cancelled implies RUNNING; a cancelled job belongs to its pool thread.
 *  - Each job is freed exactly once: by the port's thread (delivery,
 *    cancel, port destroy: any state but RUNNING) or by the pool thread
 *    (cancelled RUNNING jobs). Freeing wipes the password and hash copies.
 *  - Callbacks run only in port_async_cb, on the port's loop, after the
 *    job is freed; never after crypt_cancel or crypt_port_destroy.
 *  - port->njobs counts the port's jobs list; the port holds an ev_ref on
 *    its loop exactly while njobs > 0. Only the port's thread changes the
 *    list (and so njobs and the ref), so ev_ref/ev_unref stay on the
 *    loop's own thread.
 *  - A port destroyed during its own delivery (crypt_port_destroy from one
 *    of its callbacks) is emptied and stopped at once, but its memory is
 *    freed by port_async_cb on the way out, after the last use.
 *
 * Limits: one FIFO for all ports, so the queue bound caps memory (jobs
 * above PWHASH_PASSWORD_MAX/PWHASH_HASH_MAX are not copied), not fairness:
 * a worker flooded with logins can fill the queue for the others. Throttling
 * failed logins per client is the caller's job. A dummy costs what the last
 * real hash cost: in a store that mixes schemes or costs, unknown users take
 * as long as whoever logged in last, which a patient attacker can tell apart
 * from a given user's own cost; until the first real verification after a
 * start, the default setting's cost (yescrypt's default) applies. A hash
 * that crypt ran on but is malformed (-1 after crypt) costs two crypts.
 */
#include "cryptpool.h"

#include <errno.h>
#include <ev.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "list.h"
#include "pwhash.h"

enum job_state {
	JOB_QUEUED,  /* on pool.queue; freed by cancel/destroy, or answered -1 by cryptpool_stop */
	JOB_RUNNING, /* a pool thread is hashing it; secret[] is that thread's */
	JOB_DONE,    /* result set; on port->done until delivered */
};

struct crypt_job {
	struct list_node node;      /* on pool.queue (QUEUED) or port->done (DONE), else unlinked */
	struct list_node port_node; /* on port->jobs while the job has a port */
	struct crypt_port *port;    /* NULL once cancelled */
	enum job_state state;
	bool cancelled; /* only while RUNNING: free when crypt returns, no answer */
	bool dummy;     /* crypt_verify_dummy: no hash, pwhash_dummy with pool.setting */
	int result;     /* valid in DONE */
	crypt_done_cb *cb;
	void *arg;
	size_t pw_len;     /* password bytes at secret[0] (no NUL) */
	size_t secret_len; /* pw_len + hash length + 1 */
	char secret[];     /* password, then the hash, NUL-terminated */
};

struct crypt_port {
	struct ev_loop *loop;
	ev_async async;
	struct list_node done; /* DONE jobs (crypt_job.node), oldest first */
	struct list_node jobs; /* all its jobs, any state (crypt_job.port_node), newest first */
	size_t njobs;          /* length of jobs; > 0 <=> we hold an ev_ref on loop */
	bool delivering;       /* port_async_cb is on the stack (port's thread only) */
	bool destroyed;        /* destroyed while delivering: port_async_cb frees it */
};

static struct {
	pthread_mutex_t lock;
	pthread_cond_t work;    /* a job was queued, or stopping was set */
	struct list_node queue; /* QUEUED jobs (crypt_job.node), oldest first */
	size_t nqueued;         /* length of queue */
	size_t njobs;           /* jobs allocated and not yet freed, any state */
	bool running;           /* crypt_verify accepts jobs */
	bool stopping;          /* pool threads must exit */
	/* Dummies' setting: of the last real hash verified, else cryptpool_start's; NUL-terminated. */
	char setting[PWHASH_HASH_MAX + 1];
	/* Touched only by the thread calling cryptpool_start/cryptpool_stop. */
	pthread_t *threads;
	unsigned nthreads;
} pool = {
    .lock = PTHREAD_MUTEX_INITIALIZER,
    .work = PTHREAD_COND_INITIALIZER,
    /* An empty head (what list_init makes), ready before any thread or port exists. */
    .queue = {.prev = &pool.queue, .next = &pool.queue},
};

/*
 * Lock held. Take the oldest job off l (pool.queue or a port's done list,
 * both linked through job->node) and return it, its node left unlinked;
 * NULL when l is empty.
 */
static struct crypt_job *job_pop(struct list_node *l)
{
	struct crypt_job *job = list_first_entry(l, struct crypt_job, node);

	if (job != NULL)
		list_remove(&job->node);
	return job;
}

/* Lock held, port's thread. The first job takes a loop reference. */
static void port_attach(struct crypt_port *port, struct crypt_job *job)
{
	job->port = port;
	list_push_front(&port->jobs, &job->port_node);
	if (port->njobs++ == 0)
		ev_ref(port->loop);
}

/* Lock held, port's thread. The last job gives the loop reference back. */
static void port_detach(struct crypt_job *job)
{
	struct crypt_port *port = job->port;

	list_remove(&job->port_node);
	job->port = NULL;
	if (--port->njobs == 0)
		ev_unref(port->loop);
}

/* Lock held. The job is on no list. */
static void job_free(struct crypt_job *job)
{
	explicit_bzero(job->secret, job->secret_len);
	pool.njobs--;
	free(job);
}

/*
 * Lock held, port's thread: the port no longer wants this job. Freed at
 * once unless a pool thread is hashing it; then it is left to that thread.
 */
static void job_drop(struct crypt_job *job)
{
	switch (job->state) {
	case JOB_QUEUED:
		list_remove(&job->node);
		pool.nqueued--;
		port_detach(job);
		job_free(job);
		break;
	case JOB_RUNNING:
		port_detach(job);
		job->cancelled = true;
		break;
	case JOB_DONE:
		list_remove(&job->node);
		port_detach(job);
		job_free(job);
		break;
	}
}

/*
 * Lock held: the job has its answer. Cancelled ones are freed; the others
 * go to their (live, by the first invariant) port, whose loop is woken.
 */
static void job_finish(struct crypt_job *job, int result)
{
	struct crypt_port *port = job->port;

	if (job->cancelled) {
		job_free(job);
		return;
	}
	job->result = result;
	job->state = JOB_DONE;
	list_push_back(&port->done, &job->node);
	ev_async_send(port->loop, &port->async);
}

/*
 * Pool thread, lock not held, secret[] ours. setting (size bytes) holds
 * pool.setting as it was when the job was taken. A dummy hashes the
 * password with it. A real job verifies; if it answers 0 or 1, the hash's
 * setting is left in setting and *learned_r set; if -1, a dummy spends the
 * time a refusal must take.
 */
static int job_run(struct crypt_job *job, char *setting, size_t size, bool *learned_r)
{
	const char *hash = job->secret + job->pw_len;
	int result;

	*learned_r = false;
	if (job->dummy)
		return pwhash_dummy(job->secret, job->pw_len, setting) == 0 ? 0 : -1;
	result = pwhash_verify(job->secret, job->pw_len, hash);
	if (result >= 0)
		*learned_r = pwhash_setting(hash, setting, size) == 0;
	else if (pwhash_dummy(job->secret, job->pw_len, setting) != 0)
		result = -1; /* it is already: the dummy only spends the time */
	return result;
}

static void *pool_thread(void *unused)
{
	char setting[sizeof(pool.setting)];

	(void)unused;
	pthread_mutex_lock(&pool.lock);
	for (;;) {
		struct crypt_job *job;
		bool learned;
		int result;

		while (!pool.stopping && list_empty(&pool.queue))
			pthread_cond_wait(&pool.work, &pool.lock);
		if (pool.stopping)
			break;
		job = job_pop(&pool.queue);
		pool.nqueued--;
		job->state = JOB_RUNNING;
		memcpy(setting, pool.setting, sizeof(setting));
		pthread_mutex_unlock(&pool.lock);

		/* secret[] is ours while RUNNING: cancel touches only the fields under the lock. */
		result = job_run(job, setting, sizeof(setting), &learned);
		explicit_bzero(job->secret, job->pw_len);

		pthread_mutex_lock(&pool.lock);
		if (learned)
			memcpy(pool.setting, setting, sizeof(setting));
		job_finish(job, result);
	}
	pthread_mutex_unlock(&pool.lock);
	return NULL;
}

/* Tell every pool thread to exit, and join threads[0..n). */
static void pool_join(pthread_t *threads, unsigned n)
{
	pthread_mutex_lock(&pool.lock);
	pool.stopping = true;
	pthread_cond_broadcast(&pool.work);
	pthread_mutex_unlock(&pool.lock);
	for (unsigned i = 0; i < n; i++)
		pthread_join(threads[i], NULL);
}

int cryptpool_start(unsigned nthreads)
{
	char setting[sizeof(pool.setting)] = "";
	pthread_t *threads = NULL;
	sigset_t block, old;
	unsigned started = 0;
	int err = 0;

	if (nthreads == 0 || nthreads > CRYPTPOOL_THREADS_MAX) {
		err = EINVAL;
		goto fail;
	}
	if (pool.threads != NULL) {
		err = EALREADY;
		goto fail;
	}
	/* Before any real hash is seen, dummies cost what libxcrypt's default costs. */
	if (pwhash_default_setting(setting, sizeof(setting)) < 0) {
		err = errno;
		goto fail;
	}
	threads = calloc(nthreads, sizeof(*threads));
	if (threads == NULL) {
		err = ENOMEM;
		goto fail;
	}

	/*
	 * Signals are for the main thread and the loops, never for a thread
	 * stuck in crypt. Faults stay deliverable so that a crash (or a
	 * sanitizer) still reports from the faulting thread.
	 */
	sigfillset(&block);
	sigdelset(&block, SIGSEGV);
	sigdelset(&block, SIGBUS);
	sigdelset(&block, SIGFPE);
	sigdelset(&block, SIGILL);
	pthread_sigmask(SIG_SETMASK, &block, &old);
	for (; started < nthreads; started++) {
		err = pthread_create(&threads[started], NULL, pool_thread, NULL);
		if (err != 0)
			break;
	}
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (err != 0)
		goto fail;

	pool.threads = threads;
	pool.nthreads = nthreads;
	pthread_mutex_lock(&pool.lock);
	memcpy(pool.setting, setting, sizeof(setting));
	pool.running = true;
	pthread_mutex_unlock(&pool.lock);
	return 0;
fail:
	if (started > 0) {
		/* Nothing was queued (running is false): the threads just exit. */
		pool_join(threads, started);
		pthread_mutex_lock(&pool.lock);
		pool.stopping = false;
		pthread_mutex_unlock(&pool.lock);
	}
	free(threads);
	errno = err;
	return -1;
}

void cryptpool_stop(void)
{
	struct crypt_job *job;

	if (pool.threads == NULL)
		return;
	pthread_mutex_lock(&pool.lock);
	pool.running = false;
	pthread_mutex_unlock(&pool.lock);
	/* Each thread finishes the job it holds: crypt cannot be interrupted. */
	pool_join(pool.threads, pool.nthreads);
	free(pool.threads);
	pool.threads = NULL;
	pool.nthreads = 0;

	pthread_mutex_lock(&pool.lock);
	/* Queued jobs are never cancelled (cancel frees those): each has a live port. */
	while ((job = job_pop(&pool.queue)) != NULL) {
		pool.nqueued--;
		explicit_bzero(job->secret, job->pw_len);
		job_finish(job, -1);
	}
	pool.stopping = false;
	pthread_mutex_unlock(&pool.lock);
}

static void port_free(struct crypt_port *port)
{
	free(port);
}

/* The port's loop: deliver finished jobs one at a time, so that a callback may cancel any
 * other job of the port, or destroy the port, and nothing stale is delivered after it. */
static void port_async_cb(struct ev_loop *loop, ev_async *w, int revents)
{
	struct crypt_port *port = w->data;

	(void)loop;
	(void)revents;
	port->delivering = true;
	while (!port->destroyed) {
		struct crypt_job *job;
		crypt_done_cb *cb = NULL;
		void *arg = NULL;
		int result = -1;

		pthread_mutex_lock(&pool.lock);
		job = job_pop(&port->done);
		if (job != NULL) {
			cb = job->cb;
			arg = job->arg;
			result = job->result;
			port_detach(job);
			job_free(job);
		}
		pthread_mutex_unlock(&pool.lock);
		if (cb == NULL)
			break;
		cb(arg, result);
	}
	port->delivering = false;
	if (port->destroyed)
		port_free(port);
}

struct crypt_port *crypt_port_new(struct ev_loop *loop)
{
	struct crypt_port *port;

	if (loop == NULL)
		return NULL;
	port = calloc(1, sizeof(*port));
	if (port == NULL)
		return NULL;
	port->loop = loop;
	list_init(&port->done);
	list_init(&port->jobs);
	ev_async_init(&port->async, port_async_cb);
	port->async.data = port;
	ev_async_start(loop, &port->async);
	/* An idle port must not keep the loop running; port_attach takes the ref back. */
	ev_unref(loop);
	return port;
}

void crypt_port_destroy(struct crypt_port **pp)
{
	struct crypt_port *port = *pp;

	if (port == NULL)
		return;
	*pp = NULL;
	pthread_mutex_lock(&pool.lock);
	/* Newest first, as port_attach pushes them: the order is of no consequence. */
	while (!list_empty(&port->jobs))
		job_drop(list_first_entry(&port->jobs, struct crypt_job, port_node));
	pthread_mutex_unlock(&pool.lock);
	/* njobs is 0, so the watcher is unreferenced: libev wants the ref back before a stop. */
	ev_ref(port->loop);
	ev_async_stop(port->loop, &port->async);
	if (port->delivering)
		port->destroyed = true;
	else
		port_free(port);
}

/* crypt_verify and crypt_verify_dummy (hash "" and dummy set); errors as crypt_verify's. */
static struct crypt_job *job_submit(struct crypt_port *port, const char *password, size_t len,
                                    const char *hash, bool dummy, crypt_done_cb *cb, void *arg)
{
	struct crypt_job *job = NULL;
	size_t hash_len;
	int err;

	if (port == NULL || cb == NULL || hash == NULL || (password == NULL && len > 0)) {
		err = EINVAL;
		goto fail;
	}
	hash_len = strnlen(hash, PWHASH_HASH_MAX + 1);
	/*
	 * What pwhash cannot verify is not copied: an empty hash answers -1
	 * all the same, and the queue's memory stays bounded by
	 * CRYPTPOOL_QUEUE_MAX small jobs whatever callers pass.
	 */
	if (len > PWHASH_PASSWORD_MAX || hash_len > PWHASH_HASH_MAX) {
		len = 0;
		hash = "";
		hash_len = 0;
	}
	job = calloc(1, sizeof(*job) + len + hash_len + 1);
	if (job == NULL) {
		err = ENOMEM;
		goto fail;
	}
	job->cb = cb;
	job->arg = arg;
	job->dummy = dummy;
	job->pw_len = len;
	job->secret_len = len + hash_len + 1;
	if (len > 0)
		memcpy(job->secret, password, len);
	memcpy(job->secret + len, hash, hash_len);
	job->secret[len + hash_len] = '\0';
	job->state = JOB_QUEUED;

	pthread_mutex_lock(&pool.lock);
	if (!pool.running) {
		err = ESHUTDOWN;
		goto fail_locked;
	}
	if (pool.nqueued >= CRYPTPOOL_QUEUE_MAX) {
		err = EAGAIN;
		goto fail_locked;
	}
	list_push_back(&pool.queue, &job->node);
	pool.nqueued++;
	pool.njobs++;
	port_attach(port, job);
	pthread_cond_signal(&pool.work);
	pthread_mutex_unlock(&pool.lock);
	return job;

fail_locked:
	pthread_mutex_unlock(&pool.lock);
fail:
	if (job != NULL) {
		explicit_bzero(job->secret, job->secret_len);
		free(job);
	}
	errno = err;
	return NULL;
}

struct crypt_job *crypt_verify(struct crypt_port *port, const char *password, size_t len,
                               const char *hash, crypt_done_cb *cb, void *arg)
{
	return job_submit(port, password, len, hash, false, cb, arg);
}

struct crypt_job *crypt_verify_dummy(struct crypt_port *port, const char *password, size_t len,
                                     crypt_done_cb *cb, void *arg)
{
	/* Copied like a real job's, so that a password crypt cannot take costs the same here. */
	return job_submit(port, password, len, "", true, cb, arg);
}

void crypt_cancel(struct crypt_job *job)
{
	if (job == NULL)
		return;
	pthread_mutex_lock(&pool.lock);
	job_drop(job);
	pthread_mutex_unlock(&pool.lock);
}
