/*
 * tktkeys — see tktkeys.h.
 *
 * The ticket format is OpenSSL's own (RFC 5077 4's recommendation): key
 * name, IV, the session state encrypted with AES-256-CBC, HMAC-SHA256 over
 * all of it. OpenSSL builds and parses it; the callback only chooses keys.
 */
#include "tktkeys.h"

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <string.h>

#define TKT_AES(key)  ((key) + TKT_NAME_LEN)
#define TKT_HMAC(key) ((key) + TKT_NAME_LEN + TKT_SECRET_LEN)

int tktkeys_init(struct tktkeys *k, uint64_t lifetime)
{
	memset(k, 0, sizeof(*k));
	if (pthread_mutex_init(&k->lock, NULL) != 0)
		return -1;
	k->lifetime = lifetime ? lifetime : 1;
	return 0;
}

static void forget_all(struct tktkeys *k)
{
	OPENSSL_cleanse(k->slot, sizeof(k->slot));
	memset(k->slot, 0, sizeof(k->slot));
}

void tktkeys_fini(struct tktkeys *k)
{
	forget_all(k);
	pthread_mutex_destroy(&k->lock);
}

void tktkeys_set_lifetime(struct tktkeys *k, uint64_t lifetime)
{
	if (lifetime == 0)
		lifetime = 1;
	pthread_mutex_lock(&k->lock);
	if (lifetime != k->lifetime) {
		k->lifetime = lifetime;
		forget_all(k);
	}
	pthread_mutex_unlock(&k->lock);
}

uint64_t tktkeys_lifetime(struct tktkeys *k)
{
	uint64_t l;

	pthread_mutex_lock(&k->lock);
	l = k->lifetime;
	pthread_mutex_unlock(&k->lock);
	return l;
}

static uint64_t epoch_of(const struct tktkeys *k, time_t now)
{
	return now < 0 ? 0 : (uint64_t)now / k->lifetime;
}

uint64_t tktkeys_epoch(struct tktkeys *k, time_t now)
{
	uint64_t e;

	pthread_mutex_lock(&k->lock);
	e = epoch_of(k, now);
	pthread_mutex_unlock(&k->lock);
	return e;
}

/* The slot holding epoch's key, or NULL. Under lock. */
static struct tktkey_slot *slot_of(struct tktkeys *k, uint64_t epoch)
{
	struct tktkey_slot *s = &k->slot[epoch % TKT_SLOTS];

	return s->set && s->epoch == epoch ? s : NULL;
}

void tktkeys_put(struct tktkeys *k, uint64_t epoch, const unsigned char key[TKT_KEY_LEN],
                 time_t now)
{
	struct tktkey_slot *s;
	uint64_t e;

	pthread_mutex_lock(&k->lock);
	e = epoch_of(k, now);
	if (epoch + 1 >= e && epoch <= e + 2) {
		s = &k->slot[epoch % TKT_SLOTS];
		OPENSSL_cleanse(s->key, sizeof(s->key));
		memcpy(s->key, key, TKT_KEY_LEN);
		s->epoch = epoch;
		s->set = s->shared = true;
	}
	pthread_mutex_unlock(&k->lock);
}

bool tktkeys_shared(struct tktkeys *k, uint64_t epoch)
{
	const struct tktkey_slot *s;
	bool r;

	pthread_mutex_lock(&k->lock);
	s = slot_of(k, epoch);
	r = s != NULL && s->shared;
	pthread_mutex_unlock(&k->lock);
	return r;
}

int tktkeys_seal_key(struct tktkeys *k, time_t now, unsigned char key[TKT_KEY_LEN])
{
	struct tktkey_slot *s;
	uint64_t e;
	int r = 0;

	pthread_mutex_lock(&k->lock);
	e = epoch_of(k, now);
	s = slot_of(k, e);
	if (s == NULL) {
		s = &k->slot[e % TKT_SLOTS];
		OPENSSL_cleanse(s->key, sizeof(s->key));
		s->set = false;
		if (RAND_bytes(s->key, TKT_KEY_LEN) == 1) {
			s->epoch = e;
			s->set = true;
			s->shared = false;
		}
	}
	if (s->set) {
		memcpy(key, s->key, TKT_KEY_LEN);
		k->sealed++;
	} else {
		r = -1;
	}
	pthread_mutex_unlock(&k->lock);
	return r;
}

int tktkeys_open_key(struct tktkeys *k, time_t now, const unsigned char name[TKT_NAME_LEN],
                     unsigned char key[TKT_KEY_LEN])
{
	uint64_t e;
	int r = 0;

	pthread_mutex_lock(&k->lock);
	e = epoch_of(k, now);
	/* E first: the usual case, and the one that needs no new ticket. */
	for (uint64_t d = 0; d < 3 && r == 0; d++) {
		uint64_t want = d == 0 ? e : d == 1 ? e - 1 : e + 1;
		const struct tktkey_slot *s;

		if (d == 1 && e == 0)
			continue;
		s = slot_of(k, want);
		if (s != NULL && CRYPTO_memcmp(s->key, name, TKT_NAME_LEN) == 0) {
			memcpy(key, s->key, TKT_KEY_LEN);
			r = d == 0 ? 1 : 2;
		}
	}
	if (r)
		k->opened++;
	else
		k->unknown++;
	pthread_mutex_unlock(&k->lock);
	return r;
}

/* ---- OpenSSL ---------------------------------------------------------------- */

static int ctx_idx = -1;
static pthread_once_t ctx_idx_once = PTHREAD_ONCE_INIT;

static void ctx_idx_make(void)
{
	ctx_idx = SSL_CTX_get_ex_new_index(0, NULL, NULL, NULL, NULL);
}

static int set_hmac(EVP_MAC_CTX *hctx, unsigned char *hkey)
{
	OSSL_PARAM p[3];

	p[0] = OSSL_PARAM_construct_octet_string(OSSL_MAC_PARAM_KEY, hkey, TKT_SECRET_LEN);
	p[1] = OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, (char *)"SHA256", 0);
	p[2] = OSSL_PARAM_construct_end();
	return EVP_MAC_CTX_set_params(hctx, p) == 1 ? 0 : -1;
}

/*
 * OpenSSL's ticket key callback: enc = 1 seals a new ticket (fill name and
 * iv, set up cctx and hctx; 1 = go on), enc = 0 opens one (name given; 0 =
 * unknown key, full handshake; 1 = opened; 2 = opened, send a new ticket;
 * -1 = error).
 */
static int ticket_cb(SSL *ssl, unsigned char *name, unsigned char *iv, EVP_CIPHER_CTX *cctx,
                     EVP_MAC_CTX *hctx, int enc)
{
	struct tktkeys *k = SSL_CTX_get_ex_data(SSL_get_SSL_CTX(ssl), ctx_idx);
	unsigned char key[TKT_KEY_LEN];
	int r;

	if (k == NULL || SSL_version(ssl) != TLS1_3_VERSION)
		return 0;
	if (enc) {
		if (tktkeys_seal_key(k, time(NULL), key) < 0 ||
		    RAND_bytes(iv, EVP_MAX_IV_LENGTH) != 1) {
			r = -1;
			goto out;
		}
		memcpy(name, key, TKT_NAME_LEN);
		r = EVP_EncryptInit_ex(cctx, EVP_aes_256_cbc(), NULL, TKT_AES(key), iv) == 1 &&
		            set_hmac(hctx, TKT_HMAC(key)) == 0
		        ? 1
		        : -1;
	} else {
		/* Always 2 when opened: OpenSSL sends a resumed connection a new
		 * ticket only when asked to renew, and a client should not offer
		 * one ticket twice (RFC 8446 C.4: it links its connections). */
		r = tktkeys_open_key(k, time(NULL), name, key) > 0 ? 2 : 0;
		if (r > 0 &&
		    (EVP_DecryptInit_ex(cctx, EVP_aes_256_cbc(), NULL, TKT_AES(key), iv) != 1 ||
		     set_hmac(hctx, TKT_HMAC(key)) < 0))
			r = -1;
	}
out:
	OPENSSL_cleanse(key, sizeof(key));
	return r;
}

int tktkeys_install(SSL_CTX *ctx, struct tktkeys *k, const char *sid, uint64_t lifetime)
{
	unsigned char id[SSL_MAX_SID_CTX_LENGTH];
	unsigned idlen = 0;

	pthread_once(&ctx_idx_once, ctx_idx_make);
	if (ctx_idx < 0 || SSL_CTX_set_ex_data(ctx, ctx_idx, k) != 1)
		return -1;
	/* Longer names: their SHA-256, which is exactly the room there is. */
	if (strlen(sid) <= sizeof(id)) {
		idlen = (unsigned)strlen(sid);
		memcpy(id, sid, idlen);
	} else if (EVP_Digest(sid, strlen(sid), id, &idlen, EVP_sha256(), NULL) != 1) {
		return -1;
	}
	if (SSL_CTX_set_session_id_context(ctx, id, idlen) != 1 ||
	    SSL_CTX_set_tlsext_ticket_key_evp_cb(ctx, ticket_cb) != 1 ||
	    SSL_CTX_set_num_tickets(ctx, 1) != 1)
		return -1;
	SSL_CTX_clear_options(ctx, SSL_OP_NO_TICKET);
	SSL_CTX_set_timeout(ctx, (long)(lifetime ? lifetime : 1));
	return 0;
}
