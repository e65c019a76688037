/*
 * imapbench_proc.c: what a process tree costs, from /proc.
 *
 * CPU: utime + stime of every thread (a process's /proc/PID/stat sums its
 * threads), of the process and of each live descendant, plus cutime + cstime
 * (children that were reaped: a Dovecot imap process that ended during the
 * run is in its parent's cutime). The tree is found from the ppid field of
 * every /proc/N/stat, read once per sample.
 *
 * Connections: the socket inodes in /proc/PID/fd, looked up in /proc/net/tcp
 * and tcp6 for ESTABLISHED (state 01) sockets whose remote port is the one
 * asked for.
 */
#include <ctype.h>
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "imapbench.h"

struct proc_ent {
	int pid, ppid;
	double cpu; /* seconds */
};

struct proc_tab {
	struct proc_ent *e;
	size_t n, cap;
};

/* Fields of /proc/PID/stat after the command name: state ppid ... utime
 * (14) stime (15) cutime (16) cstime (17). The name may hold spaces and
 * parentheses: parse from the last ')'. Returns 0, or -1 when gone. */
static int read_stat(int pid, int *ppid_r, double *cpu_r)
{
	char path[64], buf[1024];
	snprintf(path, sizeof(path), "/proc/%d/stat", pid);
	FILE *f = fopen(path, "r");
	if (f == NULL)
		return -1;
	size_t n = fread(buf, 1, sizeof(buf) - 1, f);
	fclose(f);
	buf[n] = '\0';
	char *p = strrchr(buf, ')');
	if (p == NULL)
		return -1;
	p++;
	/* p: " S ppid pgrp session tty tpgid flags minflt cminflt majflt
	 * cmajflt utime stime cutime cstime" (fields 3..17) */
	char state;
	int ppid;
	unsigned long long v[13];
	if (sscanf(p, " %c %d %llu %llu %llu %llu %llu %llu %llu %llu %llu %llu %llu %llu %llu",
	           &state, &ppid, &v[0], &v[1], &v[2], &v[3], &v[4], &v[5], &v[6], &v[7], &v[8],
	           &v[9], &v[10], &v[11], &v[12]) != 15)
		return -1;
	long hz = sysconf(_SC_CLK_TCK);
	*ppid_r = ppid;
	*cpu_r = (double)(v[9] + v[10] + v[11] + v[12]) / (double)(hz > 0 ? hz : 100);
	return 0;
}

static void tab_load(struct proc_tab *t)
{
	t->n = 0;
	DIR *d = opendir("/proc");
	if (d == NULL)
		return;
	struct dirent *de;
	while ((de = readdir(d)) != NULL) {
		if (!isdigit((unsigned char)de->d_name[0]))
			continue;
		int pid = atoi(de->d_name), ppid;
		double cpu;
		if (read_stat(pid, &ppid, &cpu) < 0)
			continue;
		if (t->n == t->cap) {
			size_t cap = t->cap ? t->cap * 2 : 1024;
			struct proc_ent *e = realloc(t->e, cap * sizeof(*e));
			if (e == NULL)
				break;
			t->e = e;
			t->cap = cap;
		}
		t->e[t->n++] = (struct proc_ent){pid, ppid, cpu};
	}
	closedir(d);
}

/* Marks (in `in`, indexed like t->e) pid and its descendants; returns how
 * many, 0 when pid is not there. */
static size_t tab_tree(const struct proc_tab *t, int pid, char *in)
{
	size_t count = 0;
	memset(in, 0, t->n);
	for (size_t i = 0; i < t->n; i++)
		if (t->e[i].pid == pid) {
			in[i] = 1;
			count = 1;
		}
	if (count == 0)
		return 0;
	/* Grow the set until no process joins: a tree is at most n deep. */
	for (int changed = 1; changed;) {
		changed = 0;
		for (size_t i = 0; i < t->n; i++) {
			if (in[i])
				continue;
			for (size_t j = 0; j < t->n; j++)
				if (in[j] && t->e[j].pid == t->e[i].ppid) {
					in[i] = 1;
					count++;
					changed = 1;
					break;
				}
		}
	}
	return count;
}

/* The pids of pid's tree (pid first); *n_r how many; NULL when gone. */
static int *tree_pids(int pid, size_t *n_r, double *cpu_r)
{
	struct proc_tab t = {0};
	tab_load(&t);
	char *in = malloc(t.n ? t.n : 1);
	int *out = NULL;
	*n_r = 0;
	if (in != NULL && tab_tree(&t, pid, in) > 0) {
		out = malloc(t.n * sizeof(*out));
		double cpu = 0;
		if (out != NULL) {
			out[(*n_r)++] = pid;
			for (size_t i = 0; i < t.n; i++)
				if (in[i]) {
					cpu += t.e[i].cpu;
					if (t.e[i].pid != pid)
						out[(*n_r)++] = t.e[i].pid;
				}
		}
		if (cpu_r != NULL)
			*cpu_r = cpu;
	}
	free(in);
	free(t.e);
	return out;
}

double proc_tree_cpu(int pid)
{
	size_t n;
	double cpu = -1;
	int *p = tree_pids(pid, &n, &cpu);
	if (p == NULL)
		return -1;
	free(p);
	return cpu;
}

long proc_rss_kb(int pid)
{
	char path[64], line[256];
	snprintf(path, sizeof(path), "/proc/%d/status", pid);
	FILE *f = fopen(path, "r");
	if (f == NULL)
		return -1;
	long kb = -1;
	while (fgets(line, sizeof(line), f) != NULL)
		if (strncmp(line, "VmRSS:", 6) == 0) {
			kb = strtol(line + 6, NULL, 10);
			break;
		}
	fclose(f);
	return kb;
}

long proc_tree_rss_kb(int pid)
{
	size_t n;
	int *p = tree_pids(pid, &n, NULL);
	if (p == NULL)
		return -1;
	long sum = 0;
	for (size_t i = 0; i < n; i++) {
		long kb = proc_rss_kb(p[i]);
		if (kb > 0)
			sum += kb;
	}
	free(p);
	return sum;
}

struct inode_set {
	unsigned long *v;
	size_t n, cap;
};

static void inodes_of(int pid, struct inode_set *s)
{
	char path[64], link[128];
	snprintf(path, sizeof(path), "/proc/%d/fd", pid);
	DIR *d = opendir(path);
	if (d == NULL)
		return;
	struct dirent *de;
	while ((de = readdir(d)) != NULL) {
		if (de->d_name[0] == '.')
			continue;
		ssize_t k = readlinkat(dirfd(d), de->d_name, link, sizeof(link) - 1);
		if (k <= 0)
			continue;
		link[k] = '\0';
		unsigned long ino;
		if (sscanf(link, "socket:[%lu]", &ino) != 1)
			continue;
		if (s->n == s->cap) {
			size_t cap = s->cap ? s->cap * 2 : 256;
			unsigned long *v = realloc(s->v, cap * sizeof(*v));
			if (v == NULL)
				break;
			s->v = v;
			s->cap = cap;
		}
		s->v[s->n++] = ino;
	}
	closedir(d);
}

static int inode_in(const struct inode_set *s, unsigned long ino)
{
	for (size_t i = 0; i < s->n; i++)
		if (s->v[i] == ino)
			return 1;
	return 0;
}

/* Lines of /proc/net/tcp(6): "sl local rem st tx:rx tr:when retr uid timeout inode". */
static long count_table(const char *file, const struct inode_set *s, int port)
{
	FILE *f = fopen(file, "r");
	if (f == NULL)
		return 0;
	char line[512];
	long n = 0;
	if (fgets(line, sizeof(line), f) == NULL) {
		fclose(f);
		return 0;
	}
	while (fgets(line, sizeof(line), f) != NULL) {
		char local[64], rem[64];
		unsigned st, uid;
		unsigned long ino;
		char txrx[40], trw[40], retr[16], tmo[16];
		if (sscanf(line, " %*s %63s %63s %x %39s %39s %15s %u %15s %lu", local, rem, &st,
		           txrx, trw, retr, &uid, tmo, &ino) != 9)
			continue;
		char *colon = strrchr(rem, ':');
		if (st != 1 || colon == NULL || (int)strtol(colon + 1, NULL, 16) != port)
			continue;
		if (inode_in(s, ino))
			n++;
	}
	fclose(f);
	return n;
}

long proc_conns_to(int pid, int port, int tree)
{
	char path[64];
	snprintf(path, sizeof(path), "/proc/%d/fd", pid);
	if (access(path, R_OK) != 0)
		return -1;
	struct inode_set s = {0};
	size_t n = 1;
	int *p = NULL;
	if (tree) {
		p = tree_pids(pid, &n, NULL);
		if (p == NULL)
			return -1;
	}
	for (size_t i = 0; i < n; i++)
		inodes_of(p ? p[i] : pid, &s);
	free(p);
	long c = count_table("/proc/net/tcp", &s, port) + count_table("/proc/net/tcp6", &s, port);
	free(s.v);
	return c;
}
