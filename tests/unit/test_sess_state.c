/*
 * test_sess_state — the session's legal state changes, stated a second
 * time here as text ("FROM>TO") and compared with sess_state.c's tables
 * both ways, plus the properties the session relies on: every state is
 * reachable from NEW, every live state can close, nothing leaves DEAD,
 * and out-of-range values are refused.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "sess_state.h"

static const char *const legal_states[] = {
    "NEW>PROXYHDR",       "NEW>HANDSHAKE",    "NEW>PREAUTH",      "NEW>CLOSING",
    "PROXYHDR>HANDSHAKE", "PROXYHDR>PREAUTH", "PROXYHDR>CLOSING", "HANDSHAKE>PREAUTH",
    "HANDSHAKE>CLOSING",  "PREAUTH>STARTTLS", "PREAUTH>LOGIN",    "PREAUTH>CLOSING",
    "STARTTLS>HANDSHAKE", "STARTTLS>CLOSING", "LOGIN>PREAUTH",    "LOGIN>PROXYING",
    "LOGIN>CLOSING",      "PROXYING>CLOSING", "CLOSING>DEAD",     "PROXYING>PARKED",
    "PARKED>WAKING",      "PARKED>CLOSING",   "WAKING>PROXYING",  "WAKING>CLOSING",
};

static const char *const legal_px[] = {
    "NORMAL>LIT_WAIT",          "NORMAL>LIT_OWN_WAIT",      "NORMAL>IDLE_WAIT",
    "NORMAL>LOGOUT_WAIT",       "LIT_WAIT>NORMAL",          "LIT_OWN_WAIT>NORMAL",
    "IDLE_WAIT>IDLING",         "IDLE_WAIT>NORMAL",         "IDLING>NORMAL",
    "LOGOUT_WAIT>LOGOUT_RESET", "LOGOUT_RESET>LOGOUT_WAIT", "IDLING>PARK_DONE",
    "PARK_DONE>NORMAL",         "NORMAL>WAKE_SYNC",         "WAKE_SYNC>NORMAL",
};

static bool listed(const char *const *list, size_t n, const char *from, const char *to)
{
	char key[64];

	snprintf(key, sizeof(key), "%s>%s", from, to);
	for (size_t i = 0; i < n; i++) {
		if (strcmp(list[i], key) == 0)
			return true;
	}
	return false;
}

static void test_state_table(void **state)
{
	size_t n = sizeof(legal_states) / sizeof(legal_states[0]), seen = 0;

	(void)state;
	for (int f = 0; f < SESS_NSTATES; f++) {
		for (int t = 0; t < SESS_NSTATES; t++) {
			bool want = listed(legal_states, n, sess_state_name(f), sess_state_name(t));
			if (sess_move_ok(f, t) != want)
				fail_msg("%s -> %s: table says %d, expected %d", sess_state_name(f),
				         sess_state_name(t), sess_move_ok(f, t), want);
			seen += want;
		}
	}
	/* Every listed move names real states. */
	assert_int_equal(seen, n);
}

static void test_px_table(void **state)
{
	size_t n = sizeof(legal_px) / sizeof(legal_px[0]), seen = 0;

	(void)state;
	for (int f = 0; f < SESS_NPX; f++) {
		for (int t = 0; t < SESS_NPX; t++) {
			bool want = listed(legal_px, n, sess_px_name(f), sess_px_name(t));
			if (sess_px_move_ok(f, t) != want)
				fail_msg("%s -> %s: table says %d, expected %d", sess_px_name(f),
				         sess_px_name(t), sess_px_move_ok(f, t), want);
			seen += want;
		}
	}
	assert_int_equal(seen, n);
}

/* The states reachable from `from` (a bitmask), by the table. */
static unsigned reach(int from, int nstates, bool (*ok)(int, int))
{
	unsigned seen = 1u << from, grew = 1;

	while (grew) {
		grew = 0;
		for (int f = 0; f < nstates; f++) {
			if (!(seen & (1u << f)))
				continue;
			for (int t = 0; t < nstates; t++) {
				if (ok(f, t) && !(seen & (1u << t))) {
					seen |= 1u << t;
					grew = 1;
				}
			}
		}
	}
	return seen;
}

static bool state_ok(int f, int t)
{
	return sess_move_ok(f, t);
}

static bool px_ok(int f, int t)
{
	return sess_px_move_ok(f, t);
}

static void test_state_properties(void **state)
{
	(void)state;
	/* Every state can happen. */
	assert_int_equal(reach(SESS_NEW, SESS_NSTATES, state_ok), (1u << SESS_NSTATES) - 1);
	for (int f = 0; f < SESS_NSTATES; f++) {
		/* Every live state closes at once; every state ends freed. */
		if (f != SESS_CLOSING && f != SESS_DEAD)
			assert_true(sess_move_ok(f, SESS_CLOSING));
		assert_true(reach(f, SESS_NSTATES, state_ok) & (1u << SESS_DEAD));
		/* Only CLOSING frees: a session is never freed mid-stream. */
		assert_int_equal(sess_move_ok(f, SESS_DEAD), f == SESS_CLOSING);
		/* No state moves to itself: a repeated change is a bug. */
		assert_false(sess_move_ok(f, f));
		/* Nothing comes back from DEAD. */
		assert_false(sess_move_ok(SESS_DEAD, f));
	}
	/* Logged in, a session never goes back before login; parked or not. */
	unsigned after = (1u << SESS_PROXYING) | (1u << SESS_PARKED) | (1u << SESS_WAKING) |
	                 (1u << SESS_CLOSING) | (1u << SESS_DEAD);
	assert_int_equal(reach(SESS_PROXYING, SESS_NSTATES, state_ok), after);
	assert_int_equal(reach(SESS_PARKED, SESS_NSTATES, state_ok), after);
	/* A parked session gets a backend only through WAKING. */
	for (int f = 0; f < SESS_NSTATES; f++)
		assert_int_equal(sess_move_ok(SESS_PARKED, f),
		                 f == SESS_WAKING || f == SESS_CLOSING);
}

static void test_px_properties(void **state)
{
	(void)state;
	assert_int_equal(reach(PX_NORMAL, SESS_NPX, px_ok), (1u << SESS_NPX) - 1);
	for (int f = 0; f < SESS_NPX; f++) {
		assert_false(sess_px_move_ok(f, f));
		/* Every wait but the logout ends back in NORMAL. */
		bool out = f == PX_LOGOUT_WAIT || f == PX_LOGOUT_RESET;
		assert_int_equal((reach(f, SESS_NPX, px_ok) & (1u << PX_NORMAL)) != 0, !out);
	}
	/* A logout never turns back into forwarding commands. */
	assert_int_equal(reach(PX_LOGOUT_WAIT, SESS_NPX, px_ok),
	                 (1u << PX_LOGOUT_WAIT) | (1u << PX_LOGOUT_RESET));
}

static void test_out_of_range(void **state)
{
	(void)state;
	assert_false(sess_move_ok(SESS_NSTATES, SESS_CLOSING));
	assert_false(sess_move_ok(SESS_PREAUTH, SESS_NSTATES));
	assert_false(sess_move_ok((enum sess_state) - 1, SESS_CLOSING));
	assert_false(sess_px_move_ok(SESS_NPX, PX_NORMAL));
	assert_false(sess_px_move_ok(PX_NORMAL, (enum sess_px) - 1));
	assert_string_equal(sess_state_name(SESS_NSTATES), "?");
	assert_string_equal(sess_px_name(SESS_NPX), "?");
	/* Names are unique (the tables above are keyed by them). */
	for (int a = 0; a < SESS_NSTATES; a++)
		for (int b = a + 1; b < SESS_NSTATES; b++)
			assert_string_not_equal(sess_state_name(a), sess_state_name(b));
	for (int a = 0; a < SESS_NPX; a++)
		for (int b = a + 1; b < SESS_NPX; b++)
			assert_string_not_equal(sess_px_name(a), sess_px_name(b));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_state_table),      cmocka_unit_test(test_px_table),
	    cmocka_unit_test(test_state_properties), cmocka_unit_test(test_px_properties),
	    cmocka_unit_test(test_out_of_range),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
