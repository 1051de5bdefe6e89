/* Shared by the C files of shmring._fastpath (see the comment atop _fastpath.c). */
#ifndef SHMRING_FASTPATH_H
#define SHMRING_FASTPATH_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>

#include "shmring_layout.h" /* SHMRING_*: the layout, generated from _layout.py */

static inline uint64_t load(const uint64_t *word) {
    return __atomic_load_n(word, __ATOMIC_ACQUIRE);
}

static inline void store(uint64_t *word, uint64_t value) {
    __atomic_store_n(word, value, __ATOMIC_RELEASE);
}

/* Load `*word` between two loads of `*tail` that agree (bounded tries): then `tail` (which
 * only grows) had that value when `*word` was read, so invariants such as tail <= head <=
 * tail + slots hold between the two values even while writers move both. 0 if tail kept
 * moving: the caller looks again later. */
static inline int load_with_tail(const uint64_t *tail_word, const uint64_t *word, uint64_t *tail,
                                 uint64_t *value) {
    for (int tries = 0; tries < 64; tries++) {
        uint64_t before = __atomic_load_n(tail_word, __ATOMIC_SEQ_CST);
        *value = __atomic_load_n(word, __ATOMIC_SEQ_CST);
        *tail = __atomic_load_n(tail_word, __ATOMIC_SEQ_CST);
        if (*tail == before) {
            return 1;
        }
    }
    return 0;
}

/* Overwrite policy: the pins of reader record `reader` (active: the caller checked), each a
 * buffer index or SHMRING_NONE, into `pins`: its R_PINNED word, then the words of its pin
 * line `line` up to the line's top (never more than the line has, whatever top says); NULL
 * `line`: a ring without a pin table. The number of words read. Writers (pinned) and readers
 * (room_to_pin) scan pins through this one function (docs/FORMAT.md, "Overwrite policy"). */
static inline int shmring_reader_pins(const uint64_t *reader, const uint64_t *line,
                                      uint64_t pins[SHMRING_MAX_PINS]) {
    pins[0] = load(&reader[SHMRING_R_PINNED]);
    if (line == NULL) {
        return 1;
    }
    uint64_t top = load(&line[SHMRING_PIN_TOP]);
    int count = 1 + (int)(top < SHMRING_PINS_PER_LINE ? top : SHMRING_PINS_PER_LINE);
    for (int i = 1; i < count; i++) {
        pins[i] = load(&line[SHMRING_PIN_HELD + i - 1]);
    }
    return count;
}

/* What a reclaim works on (_publisher.c, shmring_reclaim): one ring's words, by address, and
 * its geometry. The Publisher builds one from its own fields; _fastpath.reclaim() (for Python,
 * under the header lock) from the views it is handed. */
typedef struct {
    uint64_t *control;
    const uint64_t *descriptors;
    uint64_t *freelist;
    const uint64_t *reader_records, *group_records; /* max_readers of each, RECORD_WORDS apart */
    uint64_t slots, nbuffers, descriptor_words, max_readers;
    PyObject *name; /* the ring's name (borrowed), for the error's message */
} ShmringReclaim;

/* Block policy: move the buffers of the frames every reader group released onto the free
 * list and tail past them (see _publisher.c); the new free count, or -1 with RingCorrupted
 * set (nothing changed) when the ring's words are not what they can be. */
long long shmring_reclaim(const ShmringReclaim *ring);

/* shmring.RingCorrupted, looked up when the module loads (_fastpath.c). */
extern PyObject *shmring_ring_corrupted;
extern PyObject *shmring_handle_in_use; /* _errors.HandleInUse, a RuntimeError */

/* The address of a writable memoryview made by _layout.Views, checked to lie inside
 * `within` (one of the held exports), to be 8-byte aligned and to hold `words` words;
 * NULL with ValueError (naming `owner` and `what`) otherwise. */
uint64_t *shmring_word_view(PyObject *view, const Py_buffer *within, const char *owner,
                            const char *what, uint64_t words);

/* PyArg "O&" converter to an unsigned long long: an int in [0, 2**64), else OverflowError
 * or TypeError ("K" would wrap any int modulo 2**64). */
int shmring_u64(PyObject *object, void *address);

/* FUTEX_WAKE every sleeper on the futex word at the low half of `word`. */
void shmring_futex_wake_all(uint64_t *word);

/* Change futex word `word` (the kernel compares its low 32 bits; it stays below 2^32) and
 * wake every sleeper on it: one that read the old value and was about to sleep returns at
 * once instead of missing this wake-up. The change is a compare-and-swap (seq_cst): every
 * waker's counts, and it is a full barrier between what the caller stored before (a frame,
 * a release, a close) and the wake-up. */
static inline void shmring_bump_and_wake(uint64_t *word) {
    uint64_t value = __atomic_load_n(word, __ATOMIC_RELAXED);
    while (!__atomic_compare_exchange_n(word, &value, (value + 1) & 0xFFFFFFFFu, 0,
                                        __ATOMIC_SEQ_CST, __ATOMIC_RELAXED)) {
    }
    shmring_futex_wake_all(word);
}

/* Ready a file's types and add them (and its constants) to the module: 0, or -1 with an
 * exception set. */
int shmring_add_publisher(PyObject *module); /* _publisher.c */
int shmring_add_taker(PyObject *module);     /* _taker.c */

#endif
