/*
 * admit — instance-wide connection limits (see admit.h).
 *
 * The total is one atomic counter; the per-address counts are an iplimit
 * table behind a mutex, touched once when a connection is admitted and
 * once when it ends, never per byte.
 */
#include "admit.h"

#include <openssl/rand.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <sys/resource.h>

#include "iplimit.h"

#define IP_BUCKETS 4096

static atomic_uint nconns;
static pthread_mutex_t ip_lock = PTHREAD_MUTEX_INITIALIZER;
static struct iplimit *ip_table;

unsigned admit_max_connections(unsigned configured)
{
	static atomic_uint auto_max;
	struct rlimit rl;
	unsigned a;

	if (configured > 0)
		return configured;
	a = atomic_load(&auto_max);
	if (a != 0)
		return a;
	if (getrlimit(RLIMIT_NOFILE, &rl) < 0 || rl.rlim_cur == RLIM_INFINITY ||
	    rl.rlim_cur > 2000000)
		a = 1000000;
	else if (rl.rlim_cur > 512)
		a = (unsigned)(rl.rlim_cur - 256) / 2;
	else
		a = (unsigned)rl.rlim_cur / 4 + 1;
	atomic_store(&auto_max, a);
	return a;
}

bool admit_conn(unsigned max)
{
	unsigned n = atomic_fetch_add(&nconns, 1) + 1;

	if (max > 0 && n > max) {
		atomic_fetch_sub(&nconns, 1);
		return false;
	}
	return true;
}

void admit_conn_done(void)
{
	atomic_fetch_sub(&nconns, 1);
}

bool admit_ip(const char *ip, unsigned max)
{
	bool ok = false;

	if (max == 0)
		return true;
	pthread_mutex_lock(&ip_lock);
	if (ip_table == NULL) {
		uint64_t seed = 0;
		(void)RAND_bytes((unsigned char *)&seed, sizeof(seed));
		ip_table = iplimit_new(IP_BUCKETS, seed);
	}
	if (ip_table != NULL)
		ok = iplimit_take(ip_table, ip, max) == 0;
	pthread_mutex_unlock(&ip_lock);
	return ok;
}

void admit_ip_done(const char *ip)
{
	pthread_mutex_lock(&ip_lock);
	if (ip_table != NULL)
		iplimit_release(ip_table, ip);
	pthread_mutex_unlock(&ip_lock);
}

void admit_shutdown(void)
{
	pthread_mutex_lock(&ip_lock);
	iplimit_destroy(&ip_table);
	pthread_mutex_unlock(&ip_lock);
}
