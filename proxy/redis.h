/*
 * rds — one worker's link to Redis: a command connection and a subscriber
 * connection, both hiredis async on the worker's libev loop; with [redis]
 * sentinels, both to the master that Redis Sentinel names, and a third
 * connection to a sentinel that announces failovers.
 *
 *   session --rds_command()--> [cmd conn] --reply--> cb(arg, reply)
 *                               deadline timer --> cb(arg, NULL)
 *   [sub conn] SUBSCRIBE <prefix>events --> on_event(arg, "kick", user)
 *   [sentinel] SENTINEL get-master-addr-by-name, SUBSCRIBE +switch-master
 *
 * Nothing here blocks: connections are made by address (no name lookups),
 * lost connections come back from a timer with backoff (never from inside
 * a hiredis callback), every command has a deadline, and a caller that goes
 * away cancels its request so that a late reply finds nobody.
 */
#ifndef IMAPMUX_REDIS_H
#define IMAPMUX_REDIS_H

#include <ev.h>
#include <hiredis/hiredis.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>

#include "cfg.h"

struct rds;
struct rds_req;

/* reply is NULL when Redis is down, the deadline passed or the connection
 * was lost; otherwise owned by hiredis and valid only during the call. */
typedef void rds_reply_cb(void *arg, const redisReply *reply);

/* An event from the channel: kind is "kick", "route" or "mbox" (arg1 the
 * user; arg2 the mailbox for "mbox", else NULL, 0), "drain" or "undrain"
 * (arg1 a backend name), or "resync" (subscribed again: events may have been
 * missed). Not NUL-terminated. */
typedef void rds_event_cb(void *arg, const char *kind, const char *arg1, size_t len1,
                          const char *arg2, size_t len2);

/* Start connecting to cfg's [redis] (copies what it needs from cfg). */
struct rds *rds_new(struct ev_loop *loop, const struct cfg *cfg, rds_event_cb *on_event,
                    void *event_arg);
void rds_destroy(struct rds **rp);

/* Keep *up at 1 while the command connection is up, 0 otherwise (also
 * after rds_destroy), and count its reconnections in *reconnects: the
 * worker's counters (counters.h), written on r's loop thread only. */
void rds_count_in(struct rds *r, atomic_long *up, atomic_ulong *reconnects);

/* True while the command connection is up (connected, AUTH/SELECT done; with
 * sentinels, ROLE said "master"). */
bool rds_up(const struct rds *r);

/* The key prefix (e.g. "imapmux:"). */
const char *rds_prefix(const struct rds *r);

/*
 * Send a command (binary-safe arguments). Returns a request handle, or NULL
 * when Redis is down (no callback then). cb runs exactly once unless the
 * request is cancelled first.
 */
struct rds_req *rds_command(struct rds *r, rds_reply_cb *cb, void *arg, int argc, const char **argv,
                            const size_t *argvlen);

/* Fire-and-forget variant: no callback, no handle. Returns 0, or -1 if down. */
int rds_send(struct rds *r, int argc, const char **argv, const size_t *argvlen);

/* The caller no longer wants the answer: cb will not be called. */
void rds_cancel(struct rds_req *req);

#endif
