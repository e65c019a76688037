/*
 * tktkeys — the keys that TLS 1.3 session tickets are sealed with, and the
 * OpenSSL callback that seals and opens tickets with them.
 *
 * Time is cut into epochs of `lifetime` seconds of wall-clock time, so that
 * every instance of a fleet counts the same epochs:
 *
 *   epoch(now) = now / lifetime
 *   seal: with the key of epoch E = epoch(now)
 *   open: a ticket sealed with the key of E-1, E or E+1 (an instance whose
 *         clock runs a little ahead). Other keys are forgotten. Every
 *         resumed connection gets a new ticket (sealed with E's key), so a
 *         client need never offer one ticket twice.
 *
 * A ticket's own validity is the session timeout it carries (= lifetime,
 * checked by OpenSSL), so a key seals for one epoch and opens for at most
 * two more: a stolen key opens nothing older than that.
 *
 * Where the keys come from is the caller's: tktkeys_put with keys a fleet
 * shares (through Redis: proxy/tickets.c), and, for an epoch that nobody
 * put a key for, tktkeys makes one at random itself when it first seals, so
 * tickets work on an instance alone. A shared key replaces a made one of
 * the same epoch (tickets sealed with that one then make full handshakes).
 *
 * Key: name (16 bytes, sent in the ticket), AES-256-CBC key (32), HMAC-SHA256
 * key (32). Thread-safe: OpenSSL calls the callback from every worker.
 * Tickets are for TLS 1.3 only: TLS 1.2 resumption would skip the (EC)DHE
 * exchange, and so forward secrecy, for the whole resumed connection.
 */
#ifndef IMAPMUX_TKTKEYS_H
#define IMAPMUX_TKTKEYS_H

#include <openssl/ssl.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <time.h>

#define TKT_NAME_LEN   16
#define TKT_SECRET_LEN 32
#define TKT_KEY_LEN    (TKT_NAME_LEN + 2 * TKT_SECRET_LEN) /* name, AES key, HMAC key */
#define TKT_SLOTS      4 /* epochs E-1, E, E+1 and one put ahead */

struct tktkey_slot {
	uint64_t epoch;
	bool set;
	bool shared; /* put by the caller (not made here) */
	unsigned char key[TKT_KEY_LEN];
};

struct tktkeys {
	pthread_mutex_t lock;
	uint64_t lifetime; /* seconds, >= 1 */
	struct tktkey_slot slot[TKT_SLOTS];
	unsigned long sealed, opened, unknown; /* tickets, under lock (for tests and logs) */
};

/* 0, or -1 (no mutex). lifetime 0 counts as 1. */
int tktkeys_init(struct tktkeys *k, uint64_t lifetime);
/* Forgets (and wipes) every key. */
void tktkeys_fini(struct tktkeys *k);

/* A new lifetime (a reload): epochs mean something else now, so every key
 * is forgotten; the same lifetime keeps them. */
void tktkeys_set_lifetime(struct tktkeys *k, uint64_t lifetime);

uint64_t tktkeys_lifetime(struct tktkeys *k);
uint64_t tktkeys_epoch(struct tktkeys *k, time_t now);

/* A shared key for epoch (ignored unless it is within E-1 .. E+2 of now). */
void tktkeys_put(struct tktkeys *k, uint64_t epoch, const unsigned char key[TKT_KEY_LEN],
                 time_t now);

/* True when epoch's key was put (not made here). */
bool tktkeys_shared(struct tktkeys *k, uint64_t epoch);

/* The key to seal with at now (made at random if nobody put one): 0, or -1
 * when the random generator failed. */
int tktkeys_seal_key(struct tktkeys *k, time_t now, unsigned char key[TKT_KEY_LEN]);

/* The key named name, if it may open at now: 1 (E's key), 2 (another
 * accepted epoch's: renew the ticket), 0 (none). */
int tktkeys_open_key(struct tktkeys *k, time_t now, const unsigned char name[TKT_NAME_LEN],
                     unsigned char key[TKT_KEY_LEN]);

/*
 * Issue and take TLS 1.3 tickets on a server context, sealed with k's keys
 * (k must outlive ctx): one ticket per handshake, session timeout lifetime
 * (k's own, or the one k is about to be given), the session id context sid
 * (a listener's name: a ticket opens only at the listener that issued it).
 * 0, or -1.
 */
int tktkeys_install(SSL_CTX *ctx, struct tktkeys *k, const char *sid, uint64_t lifetime);

#endif
