/*
 * test_cryptpool — the pool and its ports, with real hashes and with a
 * stand-in verifier that the test controls.
 *
 * cryptpool.c is included here (the unit-test rule links common/ only), with
 * pwhash_verify renamed to test_verify. test_verify passes real hashes on to
 * pwhash_verify, answers "fake:<password>" at once (1 if the password is the
 * one after the colon), and holds the pool thread on "gate" until the test
 * opens the gate. pwhash_dummy is renamed to test_dummy, which records the
 * setting and password it was given, holds the thread on the gate for the
 * password "gate", and runs the real pwhash_dummy only when a test asks
 * (dummies.real): the many -1 jobs of the other tests stay cheap. That makes "cancel while running", "queue full" and "stop
 * with jobs queued" deterministic. Being inside the .c, the test also reads
 * pool.njobs (under pool.lock) to prove every job was freed.
 *
 * cmocka's asserts longjmp, so they run only on the main thread: worker
 * threads record what happened and main checks it after the join.
 */
#include <crypt.h>
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "pwhash.h"

static int test_verify(const char *password, size_t len, const char *hash);
static int test_dummy(const char *password, size_t len, const char *setting);
#define pwhash_verify test_verify
#define pwhash_dummy  test_dummy
#include "../../proxy/cryptpool.c"
#undef pwhash_verify
#undef pwhash_dummy

/* The gate: "gate" jobs wait here until opened. */
static struct {
	pthread_mutex_t lock;
	pthread_cond_t cond;
	int entered; /* "gate" verifications started */
	bool open;
} gate = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, false};

static int test_verify(const char *password, size_t len, const char *hash)
{
	if (strcmp(hash, "gate") == 0) {
		pthread_mutex_lock(&gate.lock);
		gate.entered++;
		pthread_cond_broadcast(&gate.cond);
		while (!gate.open)
			pthread_cond_wait(&gate.cond, &gate.lock);
		pthread_mutex_unlock(&gate.lock);
		return 1;
	}
	if (strncmp(hash, "fake:", 5) == 0)
		return strlen(hash + 5) == len && memcmp(hash + 5, password, len) == 0;
	return pwhash_verify(password, len, hash);
}

/* What the pool's dummies were given (written on pool threads, read after the answers). */
static struct {
	pthread_mutex_t lock;
	int calls;
	char setting[PWHASH_HASH_MAX + 1]; /* of the last call */
	char password[64];                 /* of the last call, if it fits */
	size_t len;
	bool real; /* pass on to pwhash_dummy */
} dummies = {.lock = PTHREAD_MUTEX_INITIALIZER};

static int test_dummy(const char *password, size_t len, const char *setting)
{
	bool real;

	pthread_mutex_lock(&dummies.lock);
	dummies.calls++;
	snprintf(dummies.setting, sizeof(dummies.setting), "%s", setting);
	dummies.len = len;
	memset(dummies.password, 0, sizeof(dummies.password));
	if (len < sizeof(dummies.password))
		memcpy(dummies.password, password, len);
	real = dummies.real;
	pthread_mutex_unlock(&dummies.lock);
	if (len == 4 && memcmp(password, "gate", 4) == 0) {
		pthread_mutex_lock(&gate.lock);
		gate.entered++;
		pthread_cond_broadcast(&gate.cond);
		while (!gate.open)
			pthread_cond_wait(&gate.cond, &gate.lock);
		pthread_mutex_unlock(&gate.lock);
	}
	return real ? pwhash_dummy(password, len, setting) : 0;
}

static void gate_wait_entered(int n)
{
	pthread_mutex_lock(&gate.lock);
	while (gate.entered < n)
		pthread_cond_wait(&gate.cond, &gate.lock);
	pthread_mutex_unlock(&gate.lock);
}

static void gate_open(void)
{
	pthread_mutex_lock(&gate.lock);
	gate.open = true;
	pthread_cond_broadcast(&gate.cond);
	pthread_mutex_unlock(&gate.lock);
}

static size_t pool_njobs(void)
{
	size_t n;

	pthread_mutex_lock(&pool.lock);
	n = pool.njobs;
	pthread_mutex_unlock(&pool.lock);
	return n;
}

static size_t pool_nqueued(void)
{
	size_t n;

	pthread_mutex_lock(&pool.lock);
	n = pool.nqueued;
	pthread_mutex_unlock(&pool.lock);
	return n;
}

static enum job_state job_state(struct crypt_job *job)
{
	enum job_state s;

	pthread_mutex_lock(&pool.lock);
	s = job->state;
	pthread_mutex_unlock(&pool.lock);
	return s;
}

/* Poll until the pool has freed all but n jobs (a pool thread frees cancelled ones). */
static void wait_njobs(size_t n)
{
	while (pool_njobs() != n)
		usleep(1000);
}

static void wait_state(struct crypt_job *job, enum job_state s)
{
	while (job_state(job) != s)
		usleep(1000);
}

/* What one job's callback saw. */
struct rec {
	int calls;
	int result;
	pthread_t thread;
	struct crypt_job *job; /* cleared by the callback, as callers must */
};

static void rec_cb(void *arg, int result)
{
	struct rec *r = arg;

	r->calls++;
	r->result = result;
	r->thread = pthread_self();
	r->job = NULL;
}

static struct crypt_job *submit(struct crypt_port *port, const char *pw, const char *hash,
                                struct rec *r)
{
	struct crypt_job *job = crypt_verify(port, pw, strlen(pw), hash, rec_cb, r);

	r->job = job;
	return job;
}

static int teardown(void **state)
{
	(void)state;
	cryptpool_stop();
	pthread_mutex_lock(&gate.lock);
	gate.entered = 0;
	gate.open = false;
	pthread_mutex_unlock(&gate.lock);
	pthread_mutex_lock(&dummies.lock);
	dummies.calls = 0;
	dummies.real = false;
	pthread_mutex_unlock(&dummies.lock);
	/* Every job of every test is freed by the end of it. */
	assert_int_equal(pool_njobs(), 0);
	assert_int_equal(pool_nqueued(), 0);
	return 0;
}

/* --- real hashes, made once for the whole file ------------------------------------------ */

struct real {
	const char *prefix;
	unsigned long count;
	char hash[CRYPT_OUTPUT_SIZE];
};

/* Cheap costs: these tests are about the pool, test_pwhash is about the hashes. */
static struct real reals[] = {
    {"$y$", 1, ""},
    {"$6$", 1000, ""},
    {"$2b$", 4, ""},
};

#define NREALS     (sizeof(reals) / sizeof(reals[0]))
#define REAL_PW    "correct horse"
#define REAL_WRONG "correct horsf"

static int group_setup(void **state)
{
	struct crypt_data *cd = calloc(1, sizeof(*cd));

	(void)state;
	if (cd == NULL)
		return -1;
	for (size_t i = 0; i < NREALS; i++) {
		char setting[CRYPT_GENSALT_OUTPUT_SIZE];
		const char *h;

		if (crypt_gensalt_rn(reals[i].prefix, reals[i].count, NULL, 0, setting,
		                     sizeof(setting)) == NULL)
			goto fail;
		h = crypt_rn(REAL_PW, setting, cd, (int)sizeof(*cd));
		if (h == NULL || strlen(h) >= sizeof(reals[i].hash))
			goto fail;
		strcpy(reals[i].hash, h);
	}
	free(cd);
	return 0;
fail:
	free(cd);
	return -1;
}

/* --- tests ---------------------------------------------------------------------------------- */

static void test_args(void **state)
{
	struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
	struct crypt_port *port = crypt_port_new(loop);
	struct crypt_port *none = NULL;
	struct rec r = {0};

	(void)state;
	assert_non_null(port);
	assert_null(crypt_port_new(NULL));

	/* Not started yet. */
	errno = 0;
	assert_null(crypt_verify(port, "pw", 2, "fake:pw", rec_cb, &r));
	assert_int_equal(errno, ESHUTDOWN);

	assert_int_equal(cryptpool_start(0), -1);
	assert_int_equal(errno, EINVAL);
	assert_int_equal(cryptpool_start(CRYPTPOOL_THREADS_MAX + 1), -1);
	assert_int_equal(errno, EINVAL);
	assert_int_equal(cryptpool_start(2), 0);
	assert_int_equal(cryptpool_start(2), -1);
	assert_int_equal(errno, EALREADY);

	errno = 0;
	assert_null(crypt_verify(NULL, "pw", 2, "fake:pw", rec_cb, &r));
	assert_int_equal(errno, EINVAL);
	assert_null(crypt_verify(port, "pw", 2, NULL, rec_cb, &r));
	assert_int_equal(errno, EINVAL);
	assert_null(crypt_verify(port, "pw", 2, "fake:pw", NULL, &r));
	assert_int_equal(errno, EINVAL);
	assert_null(crypt_verify(port, NULL, 2, "fake:pw", rec_cb, &r));
	assert_int_equal(errno, EINVAL);

	crypt_cancel(NULL);
	crypt_port_destroy(&none);
	ev_run(loop, EVRUN_NOWAIT);
	assert_int_equal(r.calls, 0);
	assert_int_equal(pool_njobs(), 0);

	crypt_port_destroy(&port);
	assert_null(port);
	ev_loop_destroy(loop);
}

/* One port, real and fake hashes: every answer right, none early. */
static void test_results(void **state)
{
	struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
	struct crypt_port *port = crypt_port_new(loop);
	struct rec r[NREALS * 2 + 7];
	int want[NREALS * 2 + 7];
	char longpw[PWHASH_PASSWORD_MAX + 10];
	char longhash[PWHASH_HASH_MAX + 10];
	size_t n = 0;

	(void)state;
	memset(r, 0, sizeof(r));
	memset(longpw, 'p', sizeof(longpw));
	longpw[sizeof(longpw) - 1] = '\0';
	memset(longhash, 'h', sizeof(longhash));
	memcpy(longhash, "fake:", 5);
	longhash[sizeof(longhash) - 1] = '\0';
	assert_int_equal(cryptpool_start(2), 0);

	for (size_t i = 0; i < NREALS; i++) {
		want[n] = 1;
		assert_non_null(submit(port, REAL_PW, reals[i].hash, &r[n++]));
		want[n] = 0;
		assert_non_null(submit(port, REAL_WRONG, reals[i].hash, &r[n++]));
	}
	want[n] = 1;
	assert_non_null(submit(port, "secret", "fake:secret", &r[n++]));
	want[n] = 0;
	assert_non_null(submit(port, "secret", "fake:other", &r[n++]));
	want[n] = 1;
	assert_non_null(crypt_verify(port, NULL, 0, "fake:", rec_cb, &r[n++]));
	want[n] = -1; /* locked */
	assert_non_null(submit(port, "secret", "!", &r[n++]));
	want[n] = -1; /* empty hash */
	assert_non_null(submit(port, "secret", "", &r[n++]));
	want[n] = -1; /* longer than crypt takes: not even copied */
	assert_non_null(submit(port, longpw, "fake:x", &r[n++]));
	want[n] = -1;
	assert_non_null(submit(port, "x", longhash, &r[n++]));
	assert_int_equal(n, sizeof(r) / sizeof(r[0]));

	/* Nothing is answered inside crypt_verify. */
	for (size_t i = 0; i < n; i++)
		assert_int_equal(r[i].calls, 0);

	/* The port holds the loop while jobs are out, and lets go after the last. */
	ev_run(loop, 0);
	for (size_t i = 0; i < n; i++) {
		assert_int_equal(r[i].calls, 1);
		assert_int_equal(r[i].result, want[i]);
		assert_true(pthread_equal(r[i].thread, pthread_self()));
		assert_null(r[i].job);
	}
	assert_int_equal(pool_njobs(), 0);
	crypt_port_destroy(&port);
	ev_loop_destroy(loop);
}

/* Two worker threads, each with its own loop and port, many jobs each. */

#define WORKER_JOBS 120

struct worker_ctx {
	pthread_t thread;
	struct rec r[WORKER_JOBS];
	int want[WORKER_JOBS];
	int submitted;
	int failed; /* crypt_verify returned NULL */
};

static void *worker_main(void *arg)
{
	struct worker_ctx *w = arg;
	struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
	struct crypt_port *port = crypt_port_new(loop);

	for (int i = 0; i < WORKER_JOBS; i++) {
		const char *hash, *pw;

		/* Real hashes for a quarter of the jobs, right and wrong; fakes for the rest. */
		if (i % 4 == 0) {
			hash = reals[(size_t)(i / 4) % NREALS].hash;
			pw = (i / 4) % 2 == 0 ? REAL_PW : REAL_WRONG;
			w->want[i] = (i / 4) % 2 == 0;
		} else if (i % 4 == 1) {
			hash = "fake:abc";
			pw = "abc";
			w->want[i] = 1;
		} else if (i % 4 == 2) {
			hash = "fake:abc";
			pw = "abd";
			w->want[i] = 0;
		} else {
			hash = "*";
			pw = "abc";
			w->want[i] = -1;
		}
		if (submit(port, pw, hash, &w->r[i]) == NULL)
			w->failed++;
		w->submitted++;
		/* Let some answers arrive while we are still submitting. */
		if (i % 10 == 9)
			ev_run(loop, EVRUN_NOWAIT);
	}
	ev_run(loop, 0);
	crypt_port_destroy(&port);
	ev_loop_destroy(loop);
	return NULL;
}

static void test_two_workers(void **state)
{
	struct worker_ctx *w = calloc(2, sizeof(*w));

	(void)state;
	assert_non_null(w);
	assert_int_equal(cryptpool_start(3), 0);
	for (int k = 0; k < 2; k++)
		assert_int_equal(pthread_create(&w[k].thread, NULL, worker_main, &w[k]), 0);
	for (int k = 0; k < 2; k++) {
		assert_int_equal(pthread_join(w[k].thread, NULL), 0);
		assert_int_equal(w[k].failed, 0);
		assert_int_equal(w[k].submitted, WORKER_JOBS);
		for (int i = 0; i < WORKER_JOBS; i++) {
			assert_int_equal(w[k].r[i].calls, 1);
			assert_int_equal(w[k].r[i].result, w[k].want[i]);
			/* Answered on the worker's own thread, never on a pool thread. */
			assert_true(pthread_equal(w[k].r[i].thread, w[k].thread));
		}
	}
	assert_int_equal(pool_njobs(), 0);
	free(w);
}

/* A queued job cancelled: freed at once, no callback. */
static void test_cancel_queued(void **state)
{
	struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
	struct crypt_port *port = crypt_port_new(loop);
	struct rec a = {0}, b = {0};

	(void)state;
	assert_int_equal(cryptpool_start(1), 0);
	assert_non_null(submit(port, "pw", "gate", &a));
	gate_wait_entered(1);
	assert_non_null(submit(port, "pw", "fake:pw", &b));
	assert_int_equal(job_state(b.job), JOB_QUEUED);
	assert_int_equal(pool_njobs(), 2);

	crypt_cancel(b.job);
	assert_int_equal(pool_njobs(), 1);
	assert_int_equal(pool_nqueued(), 0);

	gate_open();
	ev_run(loop, 0);
	assert_int_equal(a.calls, 1);
	assert_int_equal(a.result, 1);
	assert_int_equal(b.calls, 0);
	assert_int_equal(pool_njobs(), 0);
	crypt_port_destroy(&port);
	ev_loop_destroy(loop);
}

/* A job cancelled while a pool thread hashes it: the thread frees it, no callback. */
static void test_cancel_running(void **state)
{
	struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
	struct crypt_port *port = crypt_port_new(loop);
	struct rec a = {0}, c = {0};

	(void)state;
	assert_int_equal(cryptpool_start(1), 0);
	assert_non_null(submit(port, "pw", "gate", &a));
	gate_wait_entered(1);
	assert_int_equal(job_state(a.job), JOB_RUNNING);

	crypt_cancel(a.job);
	/* Still the pool thread's; the port has let go of it (and of the loop). */
	assert_int_equal(pool_njobs(), 1);
	assert_int_equal(port->njobs, 0);
	ev_run(loop, 0); /* returns at once: nothing holds the loop */

	gate_open();
	wait_njobs(0);
	/* The pool thread is free again and the port still works. */
	assert_non_null(submit(port, "pw", "fake:pw", &c));
	ev_run(loop, 0);
	assert_int_equal(a.calls, 0);
	assert_int_equal(c.calls, 1);
	assert_int_equal(c.result, 1);
	crypt_port_destroy(&port);
	ev_loop_destroy(loop);
}

/* A finished job, not yet delivered: the password is already wiped; cancel drops the answer. */
static void test_cancel_done(void **state)
{
	struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
	struct crypt_port *port = crypt_port_new(loop);
	struct rec a = {0}, b = {0};

	(void)state;
	assert_int_equal(cryptpool_start(1), 0);
	assert_non_null(submit(port, "hunter2", "fake:hunter2", &a));
	assert_non_null(submit(port, "hunter2", "fake:hunter2", &b));
	wait_state(a.job, JOB_DONE);
	wait_state(b.job, JOB_DONE);

	pthread_mutex_lock(&pool.lock);
	assert_int_equal(a.job->pw_len, 7);
	for (size_t i = 0; i < a.job->pw_len; i++)
		assert_int_equal(a.job->secret[i], 0);
	assert_string_equal(a.job->secret + a.job->pw_len, "fake:hunter2");
	pthread_mutex_unlock(&pool.lock);

	crypt_cancel(a.job);
	assert_int_equal(pool_njobs(), 1);
	ev_run(loop, 0);
	assert_int_equal(a.calls, 0);
	assert_int_equal(b.calls, 1);
	assert_int_equal(b.result, 1);
	crypt_port_destroy(&port);
	ev_loop_destroy(loop);
}

/* A port destroyed with jobs done, running and queued; another port unaffected. */
static void test_destroy_port_in_flight(void **state)
{
	struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
	struct crypt_port *p = crypt_port_new(loop);
	struct crypt_port *q = crypt_port_new(loop);
	struct rec d = {0}, a = {0}, b = {0}, c = {0}, e = {0};

	(void)state;
	assert_int_equal(cryptpool_start(1), 0);
	assert_non_null(submit(p, "pw", "fake:pw", &d));
	wait_state(d.job, JOB_DONE);
	assert_non_null(submit(p, "pw", "gate", &a));
	gate_wait_entered(1);
	assert_non_null(submit(p, "pw", "fake:pw", &b));
	assert_non_null(submit(q, "pw", "fake:pw", &e));
	assert_non_null(submit(p, "pw", "fake:pw", &c));
	assert_int_equal(pool_njobs(), 5);
	assert_int_equal(pool_nqueued(), 3);

	crypt_port_destroy(&p);
	assert_null(p);
	/* d, b and c freed; a left to its pool thread; e untouched. */
	assert_int_equal(pool_njobs(), 2);
	assert_int_equal(pool_nqueued(), 1);

	gate_open();
	ev_run(loop, 0); /* q holds the loop until e is answered */
	wait_njobs(0);
	assert_int_equal(d.calls + a.calls + b.calls + c.calls, 0);
	assert_int_equal(e.calls, 1);
	assert_int_equal(e.result, 1);
	crypt_port_destroy(&q);
	ev_loop_destroy(loop);
}

/* What order_cb saw: the ids of the answers, in the order they were delivered. */
struct order_log {
	int ids[16];
	int n;
};

struct order_rec {
	struct order_log *log;
	int id;
	struct crypt_job *job; /* cleared by the callback */
};

static void order_cb(void *arg, int result)
{
	struct order_rec *o = arg;

	(void)result;
	o->job = NULL;
	if (o->log->n < (int)(sizeof(o->log->ids) / sizeof(o->log->ids[0])))
		o->log->ids[o->log->n] = o->id;
	o->log->n++;
}

/*
 * Orders: one pool thread takes the queue oldest first, and a port
 * delivers its answers in the order they were finished; a job cancelled
 * from the middle of the queue, or of the done list, leaves the others in
 * their order. Job 0 holds the thread on the gate while 1..5 queue behind
 * it; 3 is cancelled queued, 4 once done. A LIFO queue or done list (or
 * both) would deliver another order.
 */
static void test_orders(void **state)
{
	struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
	struct crypt_port *port = crypt_port_new(loop);
	struct order_log log = {0};
	struct order_rec o[6];
	static const int want[] = {0, 1, 2, 5};

	(void)state;
	assert_int_equal(cryptpool_start(1), 0);
	for (int i = 0; i < 6; i++) {
		o[i].log = &log;
		o[i].id = i;
		o[i].job =
		    crypt_verify(port, "pw", 2, i == 0 ? "gate" : "fake:pw", order_cb, &o[i]);
		assert_non_null(o[i].job);
		if (i == 0)
			gate_wait_entered(1);
	}
	assert_int_equal(pool_nqueued(), 5);
	crypt_cancel(o[3].job);
	o[3].job = NULL;
	assert_int_equal(pool_nqueued(), 4);

	gate_open();
	for (int i = 0; i < 6; i++) {
		if (o[i].job != NULL)
			wait_state(o[i].job, JOB_DONE);
	}
	crypt_cancel(o[4].job);
	o[4].job = NULL;
	assert_int_equal(log.n, 0); /* nothing delivered before the loop runs */
	ev_run(loop, 0);

	assert_int_equal(log.n, (int)(sizeof(want) / sizeof(want[0])));
	for (int i = 0; i < log.n; i++)
		assert_int_equal(log.ids[i], want[i]);
	assert_int_equal(pool_njobs(), 0);
	crypt_port_destroy(&port);
	ev_loop_destroy(loop);
}

/* Destroying a port whose pending async was already signalled: nothing fires later. */
static void test_destroy_port_signalled(void **state)
{
	struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
	struct crypt_port *p = crypt_port_new(loop);
	struct rec a = {0}, b = {0};

	(void)state;
	assert_int_equal(cryptpool_start(2), 0);
	assert_non_null(submit(p, "pw", "fake:pw", &a));
	assert_non_null(submit(p, "pw", "fake:nope", &b));
	wait_state(a.job, JOB_DONE);
	wait_state(b.job, JOB_DONE);
	crypt_port_destroy(&p);
	assert_int_equal(pool_njobs(), 0);
	ev_run(loop, EVRUN_NOWAIT);
	ev_run(loop, 0);
	assert_int_equal(a.calls + b.calls, 0);
	ev_loop_destroy(loop);
}

/* The queue takes CRYPTPOOL_QUEUE_MAX jobs; the next is refused, without a callback. */
static void test_queue_full(void **state)
{
	struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
	struct crypt_port *port = crypt_port_new(loop);
	struct rec *r = calloc(CRYPTPOOL_QUEUE_MAX + 3, sizeof(*r));
	struct rec gated = {0};
	int calls = 0;

	(void)state;
	assert_non_null(r);
	assert_int_equal(cryptpool_start(1), 0);
	assert_non_null(submit(port, "pw", "gate", &gated));
	gate_wait_entered(1); /* the one pool thread is busy: nothing leaves the queue */

	for (int i = 0; i < CRYPTPOOL_QUEUE_MAX; i++)
		assert_non_null(submit(port, "pw", i % 2 ? "fake:pw" : "fake:no", &r[i]));
	assert_int_equal(pool_nqueued(), CRYPTPOOL_QUEUE_MAX);
	errno = 0;
	assert_null(submit(port, "pw", "fake:pw", &r[CRYPTPOOL_QUEUE_MAX]));
	assert_int_equal(errno, EAGAIN);

	/* A cancel makes room for exactly one. */
	crypt_cancel(r[17].job);
	assert_non_null(submit(port, "pw", "fake:pw", &r[CRYPTPOOL_QUEUE_MAX + 1]));
	assert_null(submit(port, "pw", "fake:pw", &r[CRYPTPOOL_QUEUE_MAX + 2]));
	assert_int_equal(errno, EAGAIN);

	gate_open();
	ev_run(loop, 0);
	assert_int_equal(gated.calls, 1);
	for (int i = 0; i < CRYPTPOOL_QUEUE_MAX + 3; i++) {
		calls += r[i].calls;
		if (i == 17 || i == CRYPTPOOL_QUEUE_MAX || i == CRYPTPOOL_QUEUE_MAX + 2) {
			assert_int_equal(r[i].calls, 0);
		} else {
			assert_int_equal(r[i].calls, 1);
			assert_int_equal(r[i].result, i < CRYPTPOOL_QUEUE_MAX ? i % 2 : 1);
		}
	}
	assert_int_equal(calls, CRYPTPOOL_QUEUE_MAX);
	crypt_port_destroy(&port);
	ev_loop_destroy(loop);
	free(r);
}

static void *stop_main(void *unused)
{
	(void)unused;
	cryptpool_stop();
	return NULL;
}

static bool pool_stopping(void)
{
	bool s;

	pthread_mutex_lock(&pool.lock);
	s = pool.stopping;
	pthread_mutex_unlock(&pool.lock);
	return s;
}

/*
 * Stop with one job running and others queued: the running one finishes,
 * the queued ones answer -1 on their port, new ones are refused; a port
 * destroyed before stop has nothing left to answer.
 */
static void test_stop_with_jobs_queued(void **state)
{
	struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
	struct crypt_port *port = crypt_port_new(loop);
	struct crypt_port *gone = crypt_port_new(loop);
	struct rec a = {0}, b = {0}, c = {0}, g = {0}, x = {0};
	pthread_t stopper;

	(void)state;
	assert_int_equal(cryptpool_start(1), 0);
	assert_non_null(submit(port, "pw", "gate", &a));
	gate_wait_entered(1);
	assert_non_null(submit(port, "pw", "fake:pw", &b));
	assert_non_null(submit(gone, "pw", "fake:pw", &g));
	assert_non_null(submit(port, "pw", reals[0].hash, &c));
	crypt_port_destroy(&gone);

	assert_int_equal(pthread_create(&stopper, NULL, stop_main, NULL), 0);
	while (!pool_stopping())
		usleep(1000);
	errno = 0;
	assert_null(submit(port, "pw", "fake:pw", &x));
	assert_int_equal(errno, ESHUTDOWN);
	gate_open();
	assert_int_equal(pthread_join(stopper, NULL), 0);

	/* Answered, all on the port; nothing queued, nothing running. */
	assert_int_equal(pool_nqueued(), 0);
	assert_int_equal(pool_njobs(), 3);
	pthread_mutex_lock(&pool.lock);
	assert_int_equal(a.job->state, JOB_DONE);
	assert_int_equal(b.job->state, JOB_DONE);
	assert_int_equal(b.job->secret[0], 0); /* wiped though never verified */
	pthread_mutex_unlock(&pool.lock);
	ev_run(loop, 0);
	assert_int_equal(a.calls, 1);
	assert_int_equal(a.result, 1);
	assert_int_equal(b.calls, 1);
	assert_int_equal(b.result, -1);
	assert_int_equal(c.calls, 1);
	assert_int_equal(c.result, -1);
	assert_int_equal(g.calls + x.calls, 0);

	/* Stopped twice is fine; so is starting again. */
	cryptpool_stop();
	assert_int_equal(cryptpool_start(1), 0);
	assert_non_null(submit(port, "pw", "fake:pw", &x));
	ev_run(loop, 0);
	assert_int_equal(x.calls, 1);
	assert_int_equal(x.result, 1);
	crypt_port_destroy(&port);
	ev_loop_destroy(loop);
}

/* Stop with answers undelivered, then the port destroyed without its loop running again. */
static void test_stop_then_destroy(void **state)
{
	struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
	struct crypt_port *port = crypt_port_new(loop);
	struct rec a = {0}, b = {0};
	pthread_t stopper;

	(void)state;
	assert_int_equal(cryptpool_start(1), 0);
	assert_non_null(submit(port, "pw", "gate", &a));
	gate_wait_entered(1);
	assert_non_null(submit(port, "pw", "fake:pw", &b));
	assert_int_equal(pthread_create(&stopper, NULL, stop_main, NULL), 0);
	while (!pool_stopping())
		usleep(1000);
	gate_open();
	assert_int_equal(pthread_join(stopper, NULL), 0);
	assert_int_equal(pool_njobs(), 2);
	crypt_port_destroy(&port);
	assert_int_equal(pool_njobs(), 0);
	assert_int_equal(a.calls + b.calls, 0);
	ev_loop_destroy(loop);
}

/* Callbacks that cancel another answered job, submit anew, or destroy their port. */
struct reentry {
	struct crypt_port *port;
	struct rec *other; /* cancel this one's job */
	struct rec *again; /* submit this one */
	bool destroy;
	int calls;
};

static void reentry_cb(void *arg, int result)
{
	struct reentry *re = arg;

	(void)result;
	re->calls++;
	if (re->other != NULL)
		crypt_cancel(re->other->job);
	if (re->again != NULL)
		submit(re->port, "pw", "fake:pw", re->again);
	if (re->destroy)
		crypt_port_destroy(&re->port);
}

static void test_callback_reentry(void **state)
{
	struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
	struct reentry re = {0};
	struct rec victim = {0}, again = {0}, after = {0};
	struct crypt_job *first;

	(void)state;
	assert_int_equal(cryptpool_start(1), 0);
	re.port = crypt_port_new(loop);
	re.other = &victim;
	re.again = &again;
	/* One thread, FIFO: first and victim are both answered before the loop runs. */
	first = crypt_verify(re.port, "pw", 2, "fake:pw", reentry_cb, &re);
	assert_non_null(first);
	assert_non_null(submit(re.port, "pw", "fake:pw", &victim));
	wait_state(victim.job, JOB_DONE);
	ev_run(loop, 0);
	assert_int_equal(re.calls, 1);
	assert_int_equal(victim.calls, 0);
	assert_int_equal(again.calls, 1);
	assert_int_equal(again.result, 1);

	/* Now a callback destroys the port with another answer still to deliver. */
	re.other = NULL;
	re.again = NULL;
	re.destroy = true;
	first = crypt_verify(re.port, "pw", 2, "fake:pw", reentry_cb, &re);
	assert_non_null(first);
	assert_non_null(submit(re.port, "pw", "fake:pw", &after));
	wait_state(after.job, JOB_DONE);
	ev_run(loop, 0);
	assert_int_equal(re.calls, 2);
	assert_null(re.port);
	assert_int_equal(after.calls, 0);
	assert_int_equal(pool_njobs(), 0);
	ev_loop_destroy(loop);
}

/* Many threads hammering submit and cancel at random moments. */

#define CHURN_ROUNDS 400

struct churn_ctx {
	pthread_t thread;
	unsigned seed;
	int answered, cancelled, refused, wrong;
};

struct churn_rec {
	struct crypt_job *job;
	int want;
	int *answered, *wrong;
};

static void churn_cb(void *arg, int result)
{
	struct churn_rec *cr = arg;

	cr->job = NULL;
	(*cr->answered)++;
	if (result != cr->want)
		(*cr->wrong)++;
}

static void *churn_main(void *arg)
{
	struct churn_ctx *w = arg;
	struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
	struct crypt_port *port = crypt_port_new(loop);
	struct churn_rec *cr = calloc(CHURN_ROUNDS, sizeof(*cr));

	for (int i = 0; i < CHURN_ROUNDS; i++) {
		unsigned r = (unsigned)rand_r(&w->seed);

		cr[i].want = (r & 1) ? 1 : 0;
		cr[i].answered = &w->answered;
		cr[i].wrong = &w->wrong;
		cr[i].job =
		    crypt_verify(port, "pw", 2, (r & 1) ? "fake:pw" : "fake:xx", churn_cb, &cr[i]);
		if (cr[i].job == NULL) {
			w->refused++;
			continue;
		}
		/* Cancel an earlier, maybe queued, running or done, job now and then. */
		if ((r >> 1) % 3 == 0) {
			int k = (int)((r >> 3) % (unsigned)(i + 1));

			if (cr[k].job != NULL) {
				crypt_cancel(cr[k].job);
				cr[k].job = NULL;
				w->cancelled++;
			}
		}
		if ((r >> 12) % 4 == 0)
			ev_run(loop, EVRUN_NOWAIT);
	}
	/* Half the time, leave with jobs in flight. */
	if (w->seed & 1)
		ev_run(loop, 0);
	crypt_port_destroy(&port);
	ev_loop_destroy(loop);
	free(cr);
	return NULL;
}

static void test_churn(void **state)
{
	struct churn_ctx w[4];

	(void)state;
	memset(w, 0, sizeof(w));
	assert_int_equal(cryptpool_start(3), 0);
	for (int k = 0; k < 4; k++) {
		w[k].seed = 1234u + (unsigned)k;
		assert_int_equal(pthread_create(&w[k].thread, NULL, churn_main, &w[k]), 0);
	}
	for (int k = 0; k < 4; k++) {
		assert_int_equal(pthread_join(w[k].thread, NULL), 0);
		assert_int_equal(w[k].wrong, 0);
		assert_int_equal(w[k].refused, 0);
		assert_true(w[k].answered + w[k].cancelled <= CHURN_ROUNDS);
	}
	/* Ports gone with jobs running: the pool threads free those on their own. */
	wait_njobs(0);
}

/* --- dummies (crypt_verify_dummy) ------------------------------------------------------- */

static struct crypt_job *submit_dummy(struct crypt_port *port, const char *pw, struct rec *r)
{
	struct crypt_job *job = crypt_verify_dummy(port, pw, strlen(pw), rec_cb, r);

	r->job = job;
	return job;
}

static int dummy_calls(void)
{
	int n;

	pthread_mutex_lock(&dummies.lock);
	n = dummies.calls;
	pthread_mutex_unlock(&dummies.lock);
	return n;
}

/* The setting the last dummy ran with, and the password it hashed. */
static void dummy_last(char *setting, size_t size, char *pw, size_t pwsize)
{
	pthread_mutex_lock(&dummies.lock);
	snprintf(setting, size, "%s", dummies.setting);
	snprintf(pw, pwsize, "%.*s", (int)dummies.len, dummies.password);
	pthread_mutex_unlock(&dummies.lock);
}

static void pool_setting(char *out, size_t size)
{
	pthread_mutex_lock(&pool.lock);
	snprintf(out, size, "%s", pool.setting);
	pthread_mutex_unlock(&pool.lock);
}

/* Arguments and errors as crypt_verify's. */
static void test_dummy_args(void **state)
{
	struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
	struct crypt_port *port = crypt_port_new(loop);
	struct rec r = {0};

	(void)state;
	errno = 0;
	assert_null(crypt_verify_dummy(port, "pw", 2, rec_cb, &r));
	assert_int_equal(errno, ESHUTDOWN);
	assert_int_equal(cryptpool_start(1), 0);
	assert_null(crypt_verify_dummy(NULL, "pw", 2, rec_cb, &r));
	assert_int_equal(errno, EINVAL);
	assert_null(crypt_verify_dummy(port, "pw", 2, NULL, &r));
	assert_int_equal(errno, EINVAL);
	assert_null(crypt_verify_dummy(port, NULL, 2, rec_cb, &r));
	assert_int_equal(errno, EINVAL);
	ev_run(loop, 0);
	assert_int_equal(r.calls, 0);
	assert_int_equal(dummy_calls(), 0);
	crypt_port_destroy(&port);
	ev_loop_destroy(loop);
}

/* Before any real hash: crypt with the default setting made at start, answer 0. */
static void test_dummy_before_real(void **state)
{
	struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
	struct crypt_port *port = crypt_port_new(loop);
	struct rec a = {0}, b = {0}, c = {0};
	char start[sizeof(pool.setting)], used[sizeof(pool.setting)], pw[64], first[sizeof(start)];
	char longpw[PWHASH_PASSWORD_MAX + 10];

	(void)state;
	dummies.real = true; /* no pool thread yet */
	assert_int_equal(cryptpool_start(1), 0);
	pool_setting(start, sizeof(start));
	/* libxcrypt's default on Debian 12: yescrypt at passwd's cost, with a salt. */
	assert_memory_equal(start, "$y$j9T$", 7);
	assert_true(strlen(start) > 7);
	assert_true(pwhash_supported(start));

	assert_non_null(submit_dummy(port, "secret", &a));
	assert_int_equal(a.calls, 0); /* never inside crypt_verify_dummy */
	assert_non_null(crypt_verify_dummy(port, NULL, 0, rec_cb, &b));
	memset(longpw, 'p', sizeof(longpw));
	longpw[sizeof(longpw) - 1] = '\0';
	assert_non_null(submit_dummy(port, longpw, &c)); /* not copied; still a crypt */
	ev_run(loop, 0);
	assert_int_equal(a.calls, 1);
	assert_int_equal(a.result, 0);
	assert_int_equal(b.calls, 1);
	assert_int_equal(b.result, 0);
	assert_int_equal(c.calls, 1);
	assert_int_equal(c.result, 0);
	assert_true(pthread_equal(a.thread, pthread_self()));
	assert_int_equal(dummy_calls(), 3);
	dummy_last(used, sizeof(used), pw, sizeof(pw));
	assert_string_equal(used, start);
	assert_string_equal(pw, "");

	/* Another start, another salt. */
	cryptpool_stop();
	assert_int_equal(cryptpool_start(1), 0);
	memcpy(first, start, sizeof(first));
	pool_setting(start, sizeof(start));
	assert_memory_equal(start, "$y$j9T$", 7);
	assert_string_not_equal(start, first);
	crypt_port_destroy(&port);
	ev_loop_destroy(loop);
}

/*
 * Each real hash verified (right or wrong password) becomes the dummies'
 * setting, cut to its setting; fakes and hashes that cannot be verified do
 * not. A dummy answers 0 even for the password of the hash it follows. A
 * real -1 pays a dummy with its own password.
 */
static void test_dummy_follows_setting(void **state)
{
	struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
	struct crypt_port *port = crypt_port_new(loop);
	char want[sizeof(pool.setting)], used[sizeof(pool.setting)], now[sizeof(pool.setting)];
	char pw[64];

	(void)state;
	dummies.real = true;
	assert_int_equal(cryptpool_start(1), 0);
	for (size_t i = 0; i < NREALS; i++) {
		const char *hash = reals[i].hash;

		for (int right = 0; right < 2; right++) {
			struct rec v = {0}, d = {0}, f = {0}, l = {0}, d2 = {0};
			int calls = dummy_calls();

			assert_non_null(submit(port, right ? REAL_PW : REAL_WRONG, hash, &v));
			ev_run(loop, 0);
			assert_int_equal(v.result, right);
			assert_int_equal(dummy_calls(), calls); /* a real answer costs no dummy */
			assert_int_equal(pwhash_setting(hash, want, sizeof(want)), 0);
			pool_setting(now, sizeof(now));
			assert_string_equal(now, want);
			/* Only the setting is kept: not one byte of the hash proper. */
			assert_true(strlen(now) < strlen(hash));
			assert_null(strstr(now, hash + strlen(want)));

			assert_non_null(submit_dummy(port, REAL_PW, &d));
			ev_run(loop, 0);
			assert_int_equal(d.calls, 1);
			assert_int_equal(d.result, 0);
			dummy_last(used, sizeof(used), pw, sizeof(pw));
			assert_string_equal(used, want);
			assert_string_equal(pw, REAL_PW);

			/* Neither a fake answer nor a locked hash moves the setting; the lock pays. */
			assert_non_null(submit(port, "pw", "fake:pw", &f));
			assert_non_null(submit(port, "locked-pw", "!", &l));
			ev_run(loop, 0);
			assert_int_equal(f.result, 1);
			assert_int_equal(l.result, -1);
			assert_int_equal(dummy_calls(), calls + 2);
			dummy_last(used, sizeof(used), pw, sizeof(pw));
			assert_string_equal(used, want);
			assert_string_equal(pw, "locked-pw");
			assert_non_null(submit_dummy(port, "x", &d2));
			ev_run(loop, 0);
			assert_int_equal(d2.result, 0);
			dummy_last(used, sizeof(used), pw, sizeof(pw));
			assert_string_equal(used, want);
		}
	}
	crypt_port_destroy(&port);
	ev_loop_destroy(loop);
}

/* A setting crypt cannot run, and a dummy still queued at stop: -1. */
static void test_dummy_cannot_run(void **state)
{
	struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
	struct crypt_port *port = crypt_port_new(loop);
	struct rec a = {0}, g = {0}, q = {0};
	pthread_t stopper;

	(void)state;
	dummies.real = true;
	assert_int_equal(cryptpool_start(1), 0);
	pthread_mutex_lock(&pool.lock);
	snprintf(pool.setting, sizeof(pool.setting), "*");
	pthread_mutex_unlock(&pool.lock);
	assert_non_null(submit_dummy(port, "pw", &a));
	ev_run(loop, 0);
	assert_int_equal(a.calls, 1);
	assert_int_equal(a.result, -1);

	assert_non_null(submit(port, "pw", "gate", &g));
	gate_wait_entered(1);
	assert_non_null(submit_dummy(port, "pw", &q));
	assert_int_equal(pthread_create(&stopper, NULL, stop_main, NULL), 0);
	while (!pool_stopping())
		usleep(1000);
	gate_open();
	assert_int_equal(pthread_join(stopper, NULL), 0);
	ev_run(loop, 0);
	assert_int_equal(g.result, 1);
	assert_int_equal(q.calls, 1);
	assert_int_equal(q.result, -1);
	assert_int_equal(dummy_calls(), 1); /* q never ran */
	crypt_port_destroy(&port);
	ev_loop_destroy(loop);
}

/* Dummies cancelled while queued, running and done, and dropped with their port. */
static void test_dummy_cancel(void **state)
{
	struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
	struct crypt_port *port = crypt_port_new(loop);
	struct crypt_port *other = crypt_port_new(loop);
	struct rec run = {0}, queued = {0}, done = {0}, kept = {0}, o1 = {0}, o2 = {0};

	(void)state;
	assert_int_equal(cryptpool_start(1), 0);

	/* Done, not yet delivered: the password copy is already wiped. */
	assert_non_null(submit_dummy(port, "hunter2", &done));
	wait_state(done.job, JOB_DONE);
	pthread_mutex_lock(&pool.lock);
	assert_int_equal(done.job->pw_len, 7);
	for (size_t i = 0; i < done.job->pw_len; i++)
		assert_int_equal(done.job->secret[i], 0);
	pthread_mutex_unlock(&pool.lock);
	crypt_cancel(done.job);
	assert_int_equal(pool_njobs(), 0);

	/* Running (held on the gate) and queued behind it. */
	assert_non_null(submit_dummy(port, "gate", &run));
	gate_wait_entered(1);
	assert_int_equal(job_state(run.job), JOB_RUNNING);
	assert_non_null(submit_dummy(port, "pw", &queued));
	assert_non_null(submit_dummy(port, "pw", &kept));
	assert_non_null(submit_dummy(other, "pw", &o1));
	assert_non_null(submit_dummy(other, "pw", &o2));
	assert_int_equal(job_state(queued.job), JOB_QUEUED);
	crypt_cancel(queued.job);
	crypt_cancel(run.job);
	assert_int_equal(pool_njobs(), 4); /* run (its thread's), kept, o1, o2 */
	/* other's jobs go with their port; kept is answered. */
	crypt_port_destroy(&other);
	assert_int_equal(pool_njobs(), 2);

	gate_open();
	ev_run(loop, 0);
	wait_njobs(0);
	assert_int_equal(run.calls + queued.calls + done.calls + o1.calls + o2.calls, 0);
	assert_int_equal(kept.calls, 1);
	assert_int_equal(kept.result, 0);
	crypt_port_destroy(&port);
	ev_loop_destroy(loop);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test_teardown(test_args, teardown),
	    cmocka_unit_test_teardown(test_results, teardown),
	    cmocka_unit_test_teardown(test_two_workers, teardown),
	    cmocka_unit_test_teardown(test_cancel_queued, teardown),
	    cmocka_unit_test_teardown(test_cancel_running, teardown),
	    cmocka_unit_test_teardown(test_cancel_done, teardown),
	    cmocka_unit_test_teardown(test_destroy_port_in_flight, teardown),
	    cmocka_unit_test_teardown(test_destroy_port_signalled, teardown),
	    cmocka_unit_test_teardown(test_orders, teardown),
	    cmocka_unit_test_teardown(test_queue_full, teardown),
	    cmocka_unit_test_teardown(test_stop_with_jobs_queued, teardown),
	    cmocka_unit_test_teardown(test_stop_then_destroy, teardown),
	    cmocka_unit_test_teardown(test_callback_reentry, teardown),
	    cmocka_unit_test_teardown(test_churn, teardown),
	    cmocka_unit_test_teardown(test_dummy_args, teardown),
	    cmocka_unit_test_teardown(test_dummy_before_real, teardown),
	    cmocka_unit_test_teardown(test_dummy_follows_setting, teardown),
	    cmocka_unit_test_teardown(test_dummy_cannot_run, teardown),
	    cmocka_unit_test_teardown(test_dummy_cancel, teardown),
	};

	/* A hang is a failure too. */
	alarm(600);
	return cmocka_run_group_tests(tests, group_setup, NULL);
}
