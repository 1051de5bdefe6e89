/* shmring._fastpath.Publisher: every writer's write() and claim() steps, in C.
 *
 * Rules (beyond _fastpath.c's): _writer.py hands it the views of the control block, the
 * writer's record, the descriptor table, the free list, the reader and group records and
 * the buffers. It runs every step a writer takes lock-free (docs/FORMAT.md, "Writers"):
 * take a buffer (claim_buffer), or take one and copy a frame in (publish), publish it
 * (a plain Claim's exit; publish_described for frames with their own shape, stamp or
 * metadata), or give it back (abandon_claimed): alone in exclusive mode; with the other writers in
 * shared mode once the ring is sequenced (F_SEQUENCED), by the block sequencer or the
 * overwrite one (sections further down). It gives up (PUBLISH_FALLBACK, nothing changed)
 * on anything else: a switch or repair under way, no buffer to take, a frame that is not
 * one C-contiguous run of the ring's frame size. Python's general path then takes the
 * header lock and calls the same steps as `locked` (claim_buffer_locked, ...). Python
 * itself writes a descriptor or the free list only in the switches and repairs, under the
 * lock, with the writers quiesced (_ring.py).
 *
 * Policies: under `block`, buffers come off the free list, refilled by a reclaim of what
 * every reader group released. Under `overwrite`, the free list holds the buffers of frames
 * that newer ones replaced (maybe still pinned by a reader), and pop_overwrite() takes an
 * unpinned one, or evicts the oldest unpinned frame of the window; several writers use it
 * as a pool of entries (pool_take).
 *
 * Theory: a write() made of Python steps spends most of a 64-byte frame's time before its copy; the
 * same steps here cost a fraction of that (docs/performance.md). The order of the shared stores is
 * the protocol's: the W_IN_PUBLISH bracket around everything, descriptor fields, then D_SEQ (the
 * frame is visible), then C_HEAD; then, outside the bracket, a look for sleeping readers, and
 * waking them as Participant.wake_readers does (bump C_FRAMES, FUTEX_WAKE on its low 32 bits): a
 * reader that sleeps is woken by code that ran cold after the writer's own pause, and every
 * Python step there costs microseconds of wake-up latency. Stores that publish are release
 * stores; the bracket's opening store is followed by a compiler barrier only, because
 * writers joining the ring make the barrier for both sides with membarrier()
 * (_ring.quiesce_writers). The reclaim, due when the free list is empty (or at
 * every frame for large frames, to reuse the buffer still in cache), is the ring's one
 * reclaim (shmring_reclaim, which Python runs under the header lock through
 * _fastpath.reclaim): on a state it does not expect it raises RingCorrupted, naming what is
 * wrong, before it stores anything, and the publish leaves its bracket with nothing done.
 *
 * The copy of a large frame runs without the GIL: a second thread entering meanwhile (or
 * closing the writer) gets HandleInUse (a RuntimeError) rather than a shared buffer or a
 * half-left ring.
 */
#include "_fastpath.h"

#include <stdarg.h>
#include <string.h>
#include <structmember.h>
#include <sched.h>
#include <time.h>
#include <unistd.h>

#define PUBLISH_FALLBACK (-1)  /* the fast path does not apply: use the general path */
#define PUBLISH_CORRUPTED (-2) /* a value read from the ring is out of range */
#define PUBLISH_ALONE (-4)     /* shared mode, one writer left: switch back, then again */
#define PUBLISH_STALLED (-6)   /* a position held too long: the buffer stays claimed (stalled) */
#define COPY_WITHOUT_GIL_BYTES (1 << 20) /* copies this large let other threads run */

/* The copy. glibc copies blocks above a few KiB with `rep movsb`, which on a CPU without
 * FSRM (fast short `rep movsb`, CPUID 7.EDX bit 4) ran slower whenever source and
 * destination differ modulo 64, as they do for most frames: a large NumPy array's data
 * starts 16 bytes into its allocation, a ring buffer on a page. On a CPU with FSRM, glibc's
 * memmove won until a copy outgrew the core's L2 cache (docs/performance.md, "write()'s copy
 * on a CPU with FSRM", has both machines' figures). So the loop below copies when the CPU
 * lacks FSRM, and from ALIGNED_COPY_ALWAYS_BYTES on. It does what glibc's own vector loop
 * does below rep movsb's threshold: unaligned loads, aligned stores. Mutually aligned copies
 * and small ones keep memcpy. */
#define VECTOR_COPY_BYTES 8192
#define ALIGNED_COPY_ALWAYS_BYTES (2u << 20)
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <cpuid.h>
#include <immintrin.h>
#define HAVE_VECTOR_COPY 1
static int vector_copy_available; /* the CPU has AVX2: set when the module loads */
static size_t aligned_copy_bytes; /* the loop copies from this size on (see above) */

__attribute__((target("avx2"))) static void copy_to_aligned(char *destination,
                                                            const char *source, size_t n) {
    size_t i = 0;
    for (; i + 128 <= n; i += 128) {
        __m256i a = _mm256_loadu_si256((const __m256i *)(source + i));
        __m256i b = _mm256_loadu_si256((const __m256i *)(source + i + 32));
        __m256i c = _mm256_loadu_si256((const __m256i *)(source + i + 64));
        __m256i d = _mm256_loadu_si256((const __m256i *)(source + i + 96));
        _mm256_store_si256((__m256i *)(destination + i), a);
        _mm256_store_si256((__m256i *)(destination + i + 32), b);
        _mm256_store_si256((__m256i *)(destination + i + 64), c);
        _mm256_store_si256((__m256i *)(destination + i + 96), d);
    }
    memcpy(destination + i, source + i, n - i);
}

/* The same copy with non-temporal stores, which write whole lines without reading them
 * first and leave them out of the cache: for a destination that is cold anyway (see
 * Publisher.stream_copies). Non-temporal stores are weakly ordered even on x86, so the
 * sfence makes them visible before anything stored after it: the publish's release stores
 * that hand the frame to readers. */
__attribute__((target("avx2"))) static void stream_to_aligned(char *destination,
                                                              const char *source, size_t n) {
    size_t i = 0;
    for (; i + 32 <= n; i += 32) { /* bound by memory: no unrolling needed */
        _mm256_stream_si256((__m256i *)(destination + i),
                            _mm256_loadu_si256((const __m256i *)(source + i)));
    }
    _mm_sfence();
    memcpy(destination + i, source + i, n - i);
}
#endif

static void copy_frame(char *destination, const char *source, size_t n, int stream) {
#ifdef HAVE_VECTOR_COPY
    if (stream && vector_copy_available && ((uintptr_t)destination & 31) == 0) {
        stream_to_aligned(destination, source, n);
        return;
    }
    if (n >= aligned_copy_bytes && vector_copy_available &&
        ((uintptr_t)destination & 31) == 0 &&
        (((uintptr_t)destination ^ (uintptr_t)source) & 63) != 0) {
        copy_to_aligned(destination, source, n);
        return;
    }
#endif
    memcpy(destination, source, n);
}

typedef struct {
    PyObject_HEAD
    Py_buffer header; /* exports that keep the two mappings alive (see _fastpath.c) */
    Py_buffer data;
    int initialized;   /* __init__ ran (it never runs again, even after failing) */
    int holds_exports; /* until close(): the pointers below are valid */
    int busy;          /* a publish is running (maybe without the GIL) */
    int claim_open;    /* a Claim's with block runs: the record keeps one claim (Claim, below) */
    pid_t pid;         /* the process that made it: forget() is close() there */
    uint64_t *control;
    uint64_t *record;
    uint64_t *descriptors;
    uint64_t *freelist;
    uint64_t *reader_records, *group_records; /* max_readers of each, RECORD_WORDS apart */
    uint64_t *pin_table; /* overwrite: max_readers pin lines, RECORD_WORDS apart; else NULL */
    char *buffers;
    Py_ssize_t frame_bytes;
    Py_ssize_t buffer_stride;
    uint64_t slots;
    uint64_t nbuffers;
    Py_ssize_t descriptor_words;
    uint64_t max_readers;
    int overwrite; /* the ring's policy: buffers come from pop_overwrite(), not a reclaim */
    int exclusive_when_alone; /* a lone writer may switch to exclusive mode (membarrier) */
    uint64_t meta_size, ndim;
    int reclaim_eagerly;
    int stream_copies; /* shared mode copies stream past the cache (non-temporal stores) */
    long long stalled; /* the buffer a publish left claimed with PUBLISH_STALLED, else -1 */
    PyObject *name;       /* the ring's name (a str), for the reclaim's errors */
    PyObject *views;      /* a list of the buffers' ndarrays, or NULL: see Claim below */
    PyObject *on_reclaim; /* a test hook (NULL or None: none), called before each reclaim */
} Publisher;

static void release_exports(Publisher *self) {
    if (self->holds_exports) {
        self->holds_exports = 0;
        self->control = self->record = self->descriptors = self->freelist = NULL;
        self->reader_records = self->group_records = self->pin_table = NULL;
        self->buffers = NULL;
        PyBuffer_Release(&self->header);
        PyBuffer_Release(&self->data);
    }
}

static int Publisher_init(Publisher *self, PyObject *args, PyObject *kwargs) {
    static char *keywords[] = {
        "header", "data", "control", "record", "descriptors", "freelist", "reader_records",
        "group_records", "frame_bytes", "buffer_stride", "slots", "nbuffers",
        "descriptor_words", "max_readers", "reclaim_eagerly", "overwrite", "meta_size", "ndim",
        "pin_table", "name", "stream_copies", "exclusive_when_alone", "views", NULL,
    };
    PyObject *header, *data, *control, *record, *descriptors, *freelist, *readers, *groups;
    PyObject *pin_table, *name, *views = Py_None;
    Py_ssize_t frame_bytes, stride, descriptor_words;
    unsigned long long slots, nbuffers, max_readers, meta_size, ndim;
    int reclaim_eagerly, overwrite, stream_copies = 0, exclusive_when_alone = 1;
    if (self->initialized) {
        PyErr_SetString(PyExc_RuntimeError, "a Publisher is initialized once");
        return -1;
    }
    self->initialized = 1; /* once, even if it fails: parsing may run Python code (__index__) */
    if (!PyArg_ParseTupleAndKeywords(
            args, kwargs, "$OOOOOOOOnnO&O&nO&ppO&O&OUppO:Publisher", keywords, &header, &data,
            &control, &record, &descriptors, &freelist, &readers, &groups, &frame_bytes, &stride,
            shmring_u64, &slots, shmring_u64, &nbuffers, &descriptor_words, shmring_u64,
            &max_readers, &reclaim_eagerly, &overwrite, shmring_u64, &meta_size, shmring_u64,
            &ndim, &pin_table, &name, &stream_copies, &exclusive_when_alone, &views)) {
        return -1;
    }
    if (views != Py_None &&
        (!PyList_CheckExact(views) || (uint64_t)PyList_GET_SIZE(views) != nbuffers)) {
        PyErr_SetString(PyExc_ValueError, "Publisher: views must be a list of every buffer");
        return -1;
    }
    uint64_t table_words, data_bytes, record_table_words;
    if (slots == 0 || nbuffers == 0 || frame_bytes <= 0 || stride < frame_bytes ||
        descriptor_words <= 0 || max_readers == 0 || ndim == 0 || ndim > SHMRING_MAX_NDIM ||
        meta_size > SHMRING_MAX_META ||
        SHMRING_D_META_BYTE_OFFSET + meta_size > (uint64_t)descriptor_words * 8 ||
        __builtin_mul_overflow(max_readers, (uint64_t)SHMRING_RECORD_WORDS, &record_table_words) ||
        __builtin_mul_overflow(slots, (uint64_t)descriptor_words, &table_words) ||
        __builtin_mul_overflow(nbuffers - 1, (uint64_t)stride, &data_bytes) ||
        __builtin_add_overflow(data_bytes, (uint64_t)frame_bytes, &data_bytes)) {
        PyErr_SetString(PyExc_ValueError, "Publisher: impossible ring geometry");
        return -1;
    }
    if (PyObject_GetBuffer(header, &self->header, PyBUF_WRITABLE) < 0) {
        return -1;
    }
    if (PyObject_GetBuffer(data, &self->data, PyBUF_WRITABLE) < 0) {
        PyBuffer_Release(&self->header);
        return -1;
    }
    self->holds_exports = 1;
    const Py_buffer *within = &self->header;
    const char *owner = "Publisher";
    if (!(self->control = shmring_word_view(control, within, owner, "control",
                                            SHMRING_CONTROL_WORDS)) ||
        !(self->reader_records = shmring_word_view(readers, within, owner, "reader records",
                                                   record_table_words)) ||
        !(self->group_records = shmring_word_view(groups, within, owner, "group records",
                                                  record_table_words)) ||
        !(self->record = shmring_word_view(record, within, owner, "record",
                                           SHMRING_RECORD_WORDS)) ||
        !(self->descriptors =
              shmring_word_view(descriptors, within, owner, "descriptors", table_words)) ||
        !(self->freelist = shmring_word_view(freelist, within, owner, "freelist", nbuffers)) ||
        (overwrite && !(self->pin_table = shmring_word_view(pin_table, within, owner, "pin table",
                                                            record_table_words)))) {
        release_exports(self);
        return -1;
    }
    if ((uint64_t)self->data.len < data_bytes) {
        PyErr_SetString(PyExc_ValueError, "Publisher: the buffers do not fit their mapping");
        release_exports(self);
        return -1;
    }
    self->buffers = self->data.buf;
    self->frame_bytes = frame_bytes;
    self->buffer_stride = stride;
    self->slots = slots;
    self->nbuffers = nbuffers;
    self->descriptor_words = descriptor_words;
    self->max_readers = max_readers;
    self->reclaim_eagerly = reclaim_eagerly;
    self->stream_copies = stream_copies;
    self->overwrite = overwrite;
    self->exclusive_when_alone = exclusive_when_alone;
    self->meta_size = meta_size;
    self->ndim = ndim;
    self->name = Py_NewRef(name);
    self->views = views == Py_None ? NULL : Py_NewRef(views);
    self->stalled = -1;
    self->pid = getpid();
    return 0;
}

/* The steps of a publish, shared by publish() (write()) and by claim_buffer() and
 * publish_claim() (claim()). They run inside the W_IN_PUBLISH bracket that enter() opens;
 * every way out closes it. */

#define POP_FAILED (-3) /* the reclaim raised: an exception is set */

static PyObject *busy_error(void) {
    PyErr_SetString(shmring_handle_in_use,
                    "RingWriter.write() or claim() was entered while a write() on the same "
                    "writer was under way (from another thread, or a signal handler); give each "
                    "thread its own RingWriter (RingWriter.attach) or serialize the calls");
    return NULL;
}

/* How a step may go on (enter_as): not at all (shared mode while a switch or a repair is
 * under way, without the lock); as the only writer (exclusive mode, or, overwrite policy,
 * holding the header lock in shared mode without membarrier: with it, a switch or repair
 * cut short left the lock's owner mark, and taking the lock finished it, _ring.py); or
 * sequenced with the other writers (shared mode: the multi-producer steps further down,
 * one set per policy). */
enum { GO_NOT = 0, GO_ALONE = 1, GO_SEQUENCED = 2 };

/* Open the bracket; how this writer may go on (see above). */
static int enter_as(Publisher *self, int locked) {
    self->busy = 1;
    __atomic_store_n(&self->record[SHMRING_W_IN_PUBLISH], 1, __ATOMIC_RELAXED);
    __atomic_signal_fence(__ATOMIC_SEQ_CST); /* the other side's membarrier() orders it */
    if (load(&self->control[SHMRING_C_WRITER_MODE]) == SHMRING_MODE_EXCLUSIVE) {
        return GO_ALONE;
    }
    /* Sequenced once the switch is complete (F_SEQUENCED, _ring.py), lock or no lock. */
    if (load(&self->control[SHMRING_C_FLAGS]) & SHMRING_F_SEQUENCED) {
        return GO_SEQUENCED;
    }
    return self->overwrite && locked ? GO_ALONE : GO_NOT;
}

static int enter(Publisher *self) {
    return enter_as(self, 0);
}

/* Close the bracket early: nothing published, the next call allowed. */
static void leave(Publisher *self) {
    store(&self->record[SHMRING_W_IN_PUBLISH], 0);
    self->busy = 0;
}

/* The next sequence number, or PUBLISH_FALLBACK if head is damaged (the general path
 * reports it). Only this writer moves head, in exclusive mode. */
static long long next_seq(Publisher *self) {
    uint64_t seq = load(&self->control[SHMRING_C_HEAD]);
    return seq >= SHMRING_SEQ_LIMIT ? PUBLISH_FALLBACK : (long long)seq;
}

/* What a reclaim of this writer's ring works on (see shmring_reclaim). */
static ShmringReclaim reclaim_parts(const Publisher *self) {
    return (ShmringReclaim){
        .control = self->control,
        .descriptors = self->descriptors,
        .freelist = self->freelist,
        .reader_records = self->reader_records,
        .group_records = self->group_records,
        .slots = self->slots,
        .nbuffers = self->nbuffers,
        .descriptor_words = (uint64_t)self->descriptor_words,
        .max_readers = self->max_readers,
        .name = self->name,
    };
}

/* The lowest sequence number some reader group still needs (at most `head`). It scans every
 * record each time: group cursors before readers' release words, since a member stores its
 * release before it advances the cursor (docs/FORMAT.md, "Memory ordering"). */
static uint64_t release_floor(const ShmringReclaim *ring, uint64_t head) {
    uint64_t floor = head;
    for (uint64_t i = 0; i < ring->max_readers; i++) {
        const uint64_t *group = ring->group_records + i * (uint64_t)SHMRING_RECORD_WORDS;
        if (load(&group[SHMRING_G_STATE]) == SHMRING_STATE_ACTIVE) {
            uint64_t cursor = load(&group[SHMRING_G_CURSOR]);
            floor = cursor < floor ? cursor : floor;
        }
    }
    for (uint64_t i = 0; i < ring->max_readers; i++) {
        const uint64_t *reader = ring->reader_records + i * (uint64_t)SHMRING_RECORD_WORDS;
        if (load(&reader[SHMRING_R_STATE]) == SHMRING_STATE_ACTIVE) {
            uint64_t release = load(&reader[SHMRING_R_RELEASE]);
            floor = release < floor ? release : floor;
        }
    }
    return floor;
}

/* Raise RingCorrupted for `ring`: what is wrong (a format and its values), worded with what
 * to do by RingCorrupted.header_overwritten, as Python's sites are. */
static long long corrupted(const ShmringReclaim *ring, const char *format, ...) {
    va_list values;
    va_start(values, format);
    PyObject *wrong = PyUnicode_FromFormatV(format, values);
    va_end(values);
    if (wrong != NULL) {
        PyObject *error = PyObject_CallMethod(shmring_ring_corrupted, "header_overwritten", "OO",
                                              ring->name, wrong);
        Py_DECREF(wrong);
        if (error != NULL) {
            PyErr_SetObject(shmring_ring_corrupted, error);
            Py_DECREF(error);
        }
    }
    return -1;
}

/* The ring's one reclaim (block policy): the buffers of the frames every reader group has
 * released go, in order, onto the free list, and tail moves past those frames; returns the
 * new free count. The exclusive writer runs it lock-free inside its W_IN_PUBLISH bracket
 * (pop_buffer); Python, under the header lock (_fastpath.reclaim, Participant.reclaim). On a
 * state it cannot be in (a forged header) it raises RingCorrupted before any store.
 *
 * The stores: the free list entries, then C_TAIL, then C_FREE_COUNT, each a release store,
 * in that order. A reader of both words (shmring inspect: frames in the window, buffers
 * free) that loads the free count and then tail, acquire loads, sees a tail at least as new
 * as the count, so never counts a freed buffer twice, in the window and on the free list.
 * A kill between the two stores (no signal handler runs between them: C) leaves the freed
 * buffers in neither, out of use until a repair rebuilds the free list, and never in both,
 * which the next reclaim would hand out a second time. Buffer indices are not range-checked
 * here: whoever pops one checks it. */
static long long reclaim(const ShmringReclaim *ring) {
    uint64_t *control = ring->control;
    uint64_t head = load(&control[SHMRING_C_HEAD]);
    uint64_t tail = load(&control[SHMRING_C_TAIL]);
    uint64_t count = load(&control[SHMRING_C_FREE_COUNT]);
    typedef unsigned long long ull; /* what the message's %llu takes */
    if (head >= SHMRING_SEQ_LIMIT) {
        return corrupted(ring, "head %llu is past the sequence limit %llu", (ull)head,
                         (ull)SHMRING_SEQ_LIMIT);
    }
    if (tail > head) {
        return corrupted(ring, "head %llu and tail %llu are inconsistent: tail is past head",
                         (ull)head, (ull)tail);
    }
    if (head - tail > ring->slots) {
        return corrupted(ring,
                         "head %llu and tail %llu are inconsistent: a window of %llu frames "
                         "in %llu slots",
                         (ull)head, (ull)tail, (ull)(head - tail), (ull)ring->slots);
    }
    if (count > ring->nbuffers) {
        return corrupted(ring, "free count %llu is inconsistent: the ring has %llu buffers",
                         (ull)count, (ull)ring->nbuffers);
    }
    uint64_t floor = release_floor(ring, head);
    if (floor <= tail) {
        return (long long)count;
    }
    uint64_t freed = floor - tail;
    if (count + freed > ring->nbuffers) {
        return corrupted(ring,
                         "free list overflow: %llu buffers free and %llu frames released, "
                         "of %llu buffers",
                         (ull)count, (ull)freed, (ull)ring->nbuffers);
    }
    for (uint64_t i = 0; i < freed; i++) {
        const uint64_t *descriptor =
            ring->descriptors + ((tail + i) % ring->slots) * ring->descriptor_words;
        store(&ring->freelist[count + i], load(&descriptor[SHMRING_D_BUFFER]));
    }
    store(&control[SHMRING_C_TAIL], floor);
    store(&control[SHMRING_C_FREE_COUNT], count + freed);
    return (long long)(count + freed);
}

long long shmring_reclaim(const ShmringReclaim *ring) { /* for _fastpath.reclaim */
    return reclaim(ring); /* (the writer calls reclaim: no call through the PLT) */
}

/* A buffer popped off the free list (after a reclaim, when one is due: also for a free
 * count out of range, which the reclaim reports); PUBLISH_FALLBACK if none is free and
 * PUBLISH_CORRUPTED if the list names one out of range (nothing changed), POP_FAILED if the
 * reclaim (or the test hook before it) raised. */
static long long pop_buffer(Publisher *self) {
    uint64_t *control = self->control;
    uint64_t count = load(&control[SHMRING_C_FREE_COUNT]);
    if (self->reclaim_eagerly || count == 0 || count > self->nbuffers) {
        if (self->on_reclaim != NULL && self->on_reclaim != Py_None) {
            PyObject *result = PyObject_CallNoArgs(self->on_reclaim);
            if (result == NULL) {
                return POP_FAILED;
            }
            Py_DECREF(result);
        }
        ShmringReclaim ring = reclaim_parts(self);
        long long reclaimed = reclaim(&ring);
        if (reclaimed < 0) {
            return POP_FAILED;
        }
        count = (uint64_t)reclaimed;
    }
    if (count == 0) {
        return PUBLISH_FALLBACK;
    }
    uint64_t buffer = load(&self->freelist[count - 1]);
    if (buffer >= self->nbuffers) {
        return PUBLISH_CORRUPTED;
    }
    store(&control[SHMRING_C_FREE_COUNT], count - 1);
    return (long long)buffer;
}

/* ---- shared mode, block policy: the multi-producer sequencer ------------------------------
 *
 * With several writers no lock is taken per frame (the LMAX Disruptor's multi-producer
 * sequencer). Every descriptor position owns one buffer (D_BUFFER), handed over by the
 * switch to shared mode (_ring.start_sequencing). A writer claims the next sequence number
 * with a compare-and-swap on C_NEXT_SEQ once the position is free (seq < tail + slots, the
 * frame there before it released by every group), having first written the number into its
 * record (W_CLAIMED_SEQ): a repairer that finds a claimed number unpublished and no live
 * writer naming it knows its writer died, and publishes it as a skip (DF_SKIP). A writer
 * publishes by storing D_SEQ, then moves C_HEAD over every published number it finds: each
 * publisher does, so head reaches the end of the published prefix. Readers go by D_SEQ and
 * C_HEAD as with one writer. */

/* Move C_TAIL up to what every group released (writers race: compare-and-swap); the tail. */
static uint64_t advance_tail(Publisher *self) {
    uint64_t *tail_word = &self->control[SHMRING_C_TAIL];
    uint64_t tail = __atomic_load_n(tail_word, __ATOMIC_SEQ_CST);
    ShmringReclaim ring = reclaim_parts(self);
    uint64_t floor = release_floor(&ring, load(&self->control[SHMRING_C_HEAD]));
    while (floor > tail) {
        if (__atomic_compare_exchange_n(tail_word, &tail, floor, 0, __ATOMIC_SEQ_CST,
                                        __ATOMIC_SEQ_CST)) {
            return floor;
        }
    }
    return tail;
}

/* Claim the next sequence number; PUBLISH_FALLBACK if every position holds a frame some group
 * still needs (the caller waits for space), PUBLISH_CORRUPTED for a damaged header. */
static long long sequence_claim(Publisher *self) {
    uint64_t *control = self->control, *claimed = &self->record[SHMRING_W_CLAIMED_SEQ];
    for (;;) {
        uint64_t tail, seq;
        if (!load_with_tail(&control[SHMRING_C_TAIL], &control[SHMRING_C_NEXT_SEQ], &tail, &seq)) {
            return PUBLISH_FALLBACK; /* tail kept moving: wait, then look again */
        }
        if (seq >= SHMRING_SEQ_LIMIT || tail > seq || seq - tail > self->slots) {
            return PUBLISH_CORRUPTED;
        }
        if (seq - tail == self->slots) {
            if (advance_tail(self) == tail) {
                return PUBLISH_FALLBACK;
            }
            continue;
        }
        __atomic_store_n(claimed, seq, __ATOMIC_SEQ_CST); /* named before it is taken */
        if (__atomic_compare_exchange_n(&control[SHMRING_C_NEXT_SEQ], &seq, seq + 1, 0,
                                        __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) {
            return (long long)seq;
        }
        store(claimed, SHMRING_NONE); /* another writer took it */
    }
}

/* Raise C_TAIL to at least `floor` (writers race: compare-and-swap). */
static void raise_tail(Publisher *self, uint64_t floor) {
    uint64_t *tail_word = &self->control[SHMRING_C_TAIL];
    uint64_t tail = __atomic_load_n(tail_word, __ATOMIC_SEQ_CST);
    while (tail < floor && !__atomic_compare_exchange_n(tail_word, &tail, floor, 0,
                                                        __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) {
    }
}

/* Overwrite, sequenced: how far past head writers can have taken numbers: up to 2 x slots
 * (publish_owned's check), and one more per writer that passed the check together; a slots'
 * margin more for a head loaded a little before next. A next number further ahead is
 * damage, or a stale head: Python judges then, against tail and the ring's own max_writers
 * (_ring.check_counters). */
static uint64_t claims_ahead(const Publisher *self) {
    return 3 * self->slots + SHMRING_MAX_WRITERS;
}

/* Move C_HEAD over every published number from where it is. Under the overwrite policy also
 * over a number whose position a later frame took (that frame is lost), raising C_TAIL
 * first so that the window never outgrows the ring (head - tail <= slots). */
static void help_head(Publisher *self) {
    uint64_t *head_word = &self->control[SHMRING_C_HEAD];
    uint64_t head = __atomic_load_n(head_word, __ATOMIC_SEQ_CST);
    /* Overwrite: never past the numbers claimed (whatever a damaged descriptor says), nor
     * further than writers can have claimed past head (whatever a damaged next number says:
     * this loop holds the GIL, and must end) */
    uint64_t limit = self->overwrite ? load(&self->control[SHMRING_C_NEXT_SEQ]) : SHMRING_SEQ_LIMIT;
    if (self->overwrite && head < SHMRING_SEQ_LIMIT && limit - head > claims_ahead(self)) {
        limit = head + claims_ahead(self);
    }
    while (head < SHMRING_SEQ_LIMIT && head < limit) {
        const uint64_t *descriptor =
            self->descriptors + (head % self->slots) * self->descriptor_words;
        uint64_t held = __atomic_load_n(&descriptor[SHMRING_D_SEQ], __ATOMIC_SEQ_CST);
        if (held != head && (!self->overwrite || held == SHMRING_NONE ||
                             (held & ~SHMRING_SEQ_BUSY) <= head)) {
            return; /* not published yet (or being written) */
        }
        if (self->overwrite && head + 1 > self->slots) {
            raise_tail(self, head + 1 - self->slots);
        }
        if (__atomic_compare_exchange_n(head_word, &head, head + 1, 0, __ATOMIC_SEQ_CST,
                                        __ATOMIC_SEQ_CST)) {
            head++;
        } /* else `head` now holds the newer value: look there */
    }
}

/* The buffer of claimed number `seq` (its position's), or PUBLISH_CORRUPTED. */
static long long position_buffer(Publisher *self, uint64_t seq) {
    const uint64_t *descriptor = self->descriptors + (seq % self->slots) * self->descriptor_words;
    uint64_t buffer = load(&descriptor[SHMRING_D_BUFFER]);
    return buffer < self->nbuffers ? (long long)buffer : PUBLISH_CORRUPTED;
}

/* Overwrite policy: whether a live reader has pinned `buffer` (R_PINNED, or its pin line
 * up to the line's top). The caller has made its own stores visible first (a full fence): a
 * reader stores its pin (and raises its top), fences, then looks again at the frame, so
 * either it sees the writer's eviction or the writer sees the pin (docs/FORMAT.md,
 * "Overwrite"). The pin table holds one line per reader record. */
static int pinned(Publisher *self, uint64_t buffer) {
    const uint64_t *table = self->pin_table;
    uint64_t pins[SHMRING_MAX_PINS];
    for (uint64_t i = 0; i < self->max_readers; i++) {
        const uint64_t *reader = self->reader_records + i * (uint64_t)SHMRING_RECORD_WORDS;
        if (load(&reader[SHMRING_R_STATE]) == SHMRING_STATE_ACTIVE) {
            int count = shmring_reader_pins(reader, table + i * SHMRING_RECORD_WORDS, pins);
            for (int j = 0; j < count; j++) {
                if (pins[j] == buffer) {
                    return 1;
                }
            }
        }
    }
    return 0;
}

#define NOT_TAKEN (-5) /* evict(): no buffer from this frame (gone, evicted, or pinned) */

/* Overwrite policy: evict frame `seq` of the window and return its buffer if no reader
 * pins it; a pinned one stays evicted (its reader has it) and its buffer joins the free
 * list, to be taken once unpinned, since no frame of the window names it any more.
 * NOT_TAKEN for a frame replaced or evicted already, or pinned; PUBLISH_CORRUPTED for an
 * index out of range. */
static long long evict(Publisher *self, uint64_t seq) {
    uint64_t *control = self->control;
    uint64_t *descriptor = self->descriptors + (seq % self->slots) * self->descriptor_words;
    uint64_t flags = load(&descriptor[SHMRING_D_FLAGS]);
    if (load(&descriptor[SHMRING_D_SEQ]) != seq || flags & SHMRING_DF_EVICTED) {
        return NOT_TAKEN;
    }
    uint64_t buffer = load(&descriptor[SHMRING_D_BUFFER]);
    if (buffer >= self->nbuffers) {
        return PUBLISH_CORRUPTED;
    }
    __atomic_store_n(&descriptor[SHMRING_D_FLAGS], flags | SHMRING_DF_EVICTED, __ATOMIC_SEQ_CST);
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    if (!pinned(self, buffer)) {
        return (long long)buffer;
    }
    uint64_t count = load(&control[SHMRING_C_FREE_COUNT]);
    if (count >= self->nbuffers) {
        return PUBLISH_CORRUPTED;
    }
    store(&self->freelist[count], buffer);
    store(&control[SHMRING_C_FREE_COUNT], count + 1);
    return NOT_TAKEN;
}

/* Overwrite policy, exclusive writer: a buffer to write the next frame into. For a ring
 * that reclaims eagerly (large buffers, see pop_buffer) and has readers, first the buffer of
 * the newest frame every reader has passed (below the release floor; never the newest
 * frame, which latest() hands out): written a frame or two ago, it is still in cache (with
 * no reader, the window keeps its `slots` newest frames for whoever attaches). Then an unpinned
 * one off the free list (buffers no frame in the window names: publish_frame puts a frame's
 * buffer there when a newer frame replaces it; it may still be pinned), else the buffer of
 * the oldest frame in the window that nobody pins (readers skip evicted frames and count
 * them dropped). PUBLISH_FALLBACK if every buffer is pinned (the general path says which
 * knob to raise), PUBLISH_CORRUPTED for an index out of range. */
static long long pop_overwrite(Publisher *self) {
    uint64_t *control = self->control;
    __atomic_thread_fence(__ATOMIC_SEQ_CST); /* the stores that retired a buffer, then pins */
    uint64_t tail = load(&control[SHMRING_C_TAIL]), head = load(&control[SHMRING_C_HEAD]);
    uint64_t count = load(&control[SHMRING_C_FREE_COUNT]);
    if (tail > head || head - tail > self->slots || head >= SHMRING_SEQ_LIMIT ||
        count > self->nbuffers) {
        return PUBLISH_CORRUPTED;
    }
    long long taken = NOT_TAKEN;
    if (self->reclaim_eagerly && head > tail && load(&control[SHMRING_C_READERS])) {
        ShmringReclaim ring = reclaim_parts(self);
        for (uint64_t seq = release_floor(&ring, head - 1); seq-- > tail && taken == NOT_TAKEN;) {
            taken = evict(self, seq);
        }
        if (taken != NOT_TAKEN) {
            return taken;
        }
        count = load(&control[SHMRING_C_FREE_COUNT]); /* evict() may have added to it */
    }
    for (uint64_t i = count; i-- > 0;) {
        uint64_t buffer = load(&self->freelist[i]);
        if (buffer >= self->nbuffers) {
            return PUBLISH_CORRUPTED;
        }
        if (!pinned(self, buffer)) {
            store(&self->freelist[i], load(&self->freelist[count - 1]));
            store(&control[SHMRING_C_FREE_COUNT], count - 1);
            return (long long)buffer;
        }
    }
    for (uint64_t seq = tail; seq < head && taken == NOT_TAKEN; seq++) {
        taken = evict(self, seq);
    }
    return taken == NOT_TAKEN ? PUBLISH_FALLBACK : taken;
}

/* A buffer for the next frame by the ring's policy (see pop_buffer and pop_overwrite). */
static long long take_buffer(Publisher *self) {
    return self->overwrite ? pop_overwrite(self) : pop_buffer(self);
}

/* A frame's stamp, and how it differs from a ring-shaped one without metadata (NULL shape:
 * the ring's; no metadata: meta_len 0), or, with a `skip` count, a gap: no frame, standing
 * for that many lost ones (DF_SKIP). Without one, a frame is ring-shaped, bare and stamped
 * now. */
typedef struct {
    uint64_t timestamp_ns;
    const uint64_t *shape; /* ndim sizes, or NULL: the ring's shape */
    const char *meta;
    uint64_t meta_len;
    uint64_t skip; /* 0: a frame; else the frames this gap stands for (1..MAX_SKIP_COUNT) */
} Description;

/* Overwrite policy: the frame that frame `seq` replaces in its descriptor leaves the window
 * (C_TAIL) before any word of the descriptor changes, so that no reader ever finds a window
 * frame whose descriptor is half rewritten; its buffer, unless it was evicted (and so taken),
 * is the one to put on the free list once `seq` is published, else NONE. */
static uint64_t retire_replaced(Publisher *self, uint64_t seq, const uint64_t *descriptor) {
    if (seq < self->slots) {
        return SHMRING_NONE;
    }
    uint64_t replaced = seq - self->slots, buffer = SHMRING_NONE;
    if (load(&descriptor[SHMRING_D_SEQ]) == replaced &&
        !(load(&descriptor[SHMRING_D_FLAGS]) & SHMRING_DF_EVICTED)) {
        buffer = load(&descriptor[SHMRING_D_BUFFER]);
    }
    if (load(&self->control[SHMRING_C_TAIL]) <= replaced) {
        store(&self->control[SHMRING_C_TAIL], replaced + 1);
    }
    return buffer;
}

/* After a publish: make it visible before looking for sleepers (a full fence: the fast side
 * of a store-then-load pair fences, FORMAT.md; a sleeper's membarrier instead would cost
 * every sleep a system call and every CPU an interrupt, which fan-out pays for at every
 * frame), then wake them as Participant.wake_readers does. */
static void wake_readers(Publisher *self) {
    uint64_t *control = self->control;
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    if (load(&control[SHMRING_C_READER_WAITERS])) {
        shmring_bump_and_wake(&control[SHMRING_C_FRAMES]);
    }
}

/* Nanoseconds of CLOCK_MONOTONIC, time.monotonic_ns()'s clock. */
static uint64_t monotonic_ns(void) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (uint64_t)now.tv_sec * 1000000000u + (uint64_t)now.tv_nsec;
}

/* Write every word of `descriptor` but D_SEQ for a frame in `buffer` (NONE: leave D_BUFFER,
 * a sequenced block ring's position owns it), as `how` says, or ring-shaped, no metadata,
 * stamped now. Inlined: a call on every frame's path shows at 64 B. */
static inline __attribute__((always_inline)) void describe_frame(Publisher *self,
                                                                  uint64_t *descriptor,
                                                                  uint64_t buffer,
                                                                  const Description *how) {
    uint64_t stamp = how ? how->timestamp_ns : monotonic_ns(), flags = 0;
    if (how && how->skip) {
        flags = SHMRING_DF_SKIP | how->skip << SHMRING_SKIP_COUNT_SHIFT;
    }
    if (how && how->meta_len) {
        /* The plain stores of the copy after the stores that took the descriptor (C_TAIL,
         * or the swap of D_SEQ): a reader's check after its look (still_there) relies on it. */
        __atomic_thread_fence(__ATOMIC_RELEASE);
        memcpy((char *)descriptor + SHMRING_D_META_BYTE_OFFSET, how->meta, how->meta_len);
        flags |= how->meta_len << SHMRING_META_LEN_SHIFT;
    }
    if (how && how->shape) {
        for (uint64_t axis = 0; axis < self->ndim; axis++) {
            store(&descriptor[SHMRING_D_SHAPE + axis], how->shape[axis]);
        }
        flags |= SHMRING_DF_OWN_SHAPE;
    }
    if (buffer != SHMRING_NONE) {
        store(&descriptor[SHMRING_D_BUFFER], buffer);
    }
    store(&descriptor[SHMRING_D_TIMESTAMP], stamp);
    store(&descriptor[SHMRING_D_FLAGS], flags); /* 0: ring-shaped, no metadata */
}

/* After a publish: the claim (if it was one) is done, the bracket closed, sleeping readers
 * woken; returns `seq`. */
static PyObject *published(Publisher *self, uint64_t seq, int claimed) {
    if (claimed) {
        store(&self->record[SHMRING_W_CLAIMED], SHMRING_NONE);
    }
    store(&self->record[SHMRING_W_IN_PUBLISH], 0);
    wake_readers(self);
    self->busy = 0;
    return PyLong_FromUnsignedLongLong(seq);
}

/* Describe frame `seq` in `buffer` (as `how` says, or ring-shaped, no metadata, stamped now)
 * and make it visible; close the bracket; wake sleeping readers. Returns `seq`. A
 * `sequenced` frame (shared mode, block policy) is in its position's buffer already, and
 * head moves over whatever is published. */
static PyObject *publish_frame(Publisher *self, uint64_t seq, uint64_t buffer, int claimed,
                               const Description *how, int sequenced) {
    uint64_t *control = self->control;
    uint64_t *descriptor = self->descriptors + (seq % self->slots) * self->descriptor_words;
    uint64_t retired = self->overwrite ? retire_replaced(self, seq, descriptor) : SHMRING_NONE;
    describe_frame(self, descriptor, sequenced ? SHMRING_NONE : buffer, how);
    if (sequenced) {
        __atomic_store_n(&descriptor[SHMRING_D_SEQ], seq, __ATOMIC_SEQ_CST); /* visible */
        store(&self->record[SHMRING_W_CLAIMED_SEQ], SHMRING_NONE);
        help_head(self);
    } else {
        store(&descriptor[SHMRING_D_SEQ], seq); /* the frame is visible from here on */
        store(&control[SHMRING_C_HEAD], seq + 1);
    }
    if (retired < self->nbuffers) { /* the replaced frame's buffer is free (maybe pinned) */
        uint64_t count = load(&control[SHMRING_C_FREE_COUNT]);
        if (count < self->nbuffers) {
            store(&self->freelist[count], retired);
            store(&control[SHMRING_C_FREE_COUNT], count + 1);
        }
    }
    return published(self, seq, claimed);
}

/* ---- shared mode, overwrite policy: several writers without the lock -----------------------
 *
 * Overwrite writers never wait for readers, so unlike the block sequencer a writer cannot
 * wait for a position to be released; instead it owns a position for the few stores that
 * rewrite it. Its buffer comes from the pool (the free list, one entry per buffer, each a
 * free buffer's index or NONE, taken and refilled with compare-and-swaps; pool_take), and
 * it copies its frame in before it claims anything. Then (publish_owned) it takes the next
 * number with a fetch-add on C_NEXT_SEQ and the number's position with a compare-and-swap of
 * D_SEQ from the older frame there to number | SEQ_BUSY. Readers validate a frame by its
 * D_SEQ after pinning its buffer, so from that swap on no reader takes the old frame, whose
 * buffer goes back to the pool (pinned or not: pool_take skips pinned ones). It writes the
 * descriptor, then D_SEQ = number, then moves head (help_head). A position whose D_SEQ is
 * already past the number was taken by a later frame: this frame is lost, as a frame
 * overwritten before anyone read it is. A position another writer owns is waited for: a
 * few stores, unless that writer was preempted or died there; after POSITION_WAIT_NS, or
 * when a repair is under way (F_SEQUENCED cleared), the writer keeps its buffer claimed
 * (W_CLAIMED) and its number (W_CLAIMED_SEQ: the next publish places that number, so no
 * hole is left behind) and returns PUBLISH_STALLED: Python reaps dead writers, which
 * repairs, and publishes again. A repair places every number claimed but not placed as a
 * skip and clears the writers' kept numbers. Evicting a frame (every pool buffer pinned) owns its
 * position the same way. What a writer that died leaves (a position it owned, a number it
 * never placed, the buffer in its hands) is repaired under the header lock with every live
 * writer out of its bracket (_ring.py, resequence): lock-free, only certain states exist. */
#define POSITION_WAIT_NS 20000000u /* held longer than a preemption: maybe a dead writer */
/* This thread's wait for a position: POSITION_WAIT_NS, or less within an awaitable call's
 * step, which runs on the event loop's thread (_lock.impatiently, position_patience()). */
static _Thread_local uint64_t position_wait_ns = POSITION_WAIT_NS;
#define POSITION_SPINS 64         /* pauses before yielding the CPU to the holder */
#if defined(__x86_64__) || defined(__i386__)
#define CPU_PAUSE() __builtin_ia32_pause()
#elif defined(__aarch64__)
#define CPU_PAUSE() __asm__ __volatile__("yield")
#else
#define CPU_PAUSE() ((void)0)
#endif

/* Put free `buffer` into an empty entry of the pool: 0, or PUBLISH_CORRUPTED if none is
 * empty (each buffer is in one entry at most, so one is, unless the ring is damaged). */
static long long pool_put(Publisher *self, uint64_t buffer) {
    for (int pass = 0; pass < 4; pass++) { /* other writers may fill the entry seen empty */
        for (uint64_t i = 0; i < self->nbuffers; i++) {
            uint64_t empty = SHMRING_NONE;
            if (load(&self->freelist[i]) == SHMRING_NONE &&
                __atomic_compare_exchange_n(&self->freelist[i], &empty, buffer, 0,
                                            __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) {
                return 0;
            }
        }
    }
    return PUBLISH_CORRUPTED;
}

/* Sequenced overwrite: evict frame `seq` of the window (as evict() does, owning its
 * position meanwhile) and return its buffer if no reader pins it; a pinned one goes to the
 * pool. NOT_TAKEN for a frame replaced, evicted or owned by another writer, or pinned. */
static long long evict_owned(Publisher *self, uint64_t seq) {
    uint64_t *descriptor = self->descriptors + (seq % self->slots) * self->descriptor_words;
    uint64_t expected = seq;
    if (!__atomic_compare_exchange_n(&descriptor[SHMRING_D_SEQ], &expected,
                                     seq | SHMRING_SEQ_BUSY, 0, __ATOMIC_SEQ_CST,
                                     __ATOMIC_SEQ_CST)) {
        return NOT_TAKEN;
    }
    uint64_t flags = load(&descriptor[SHMRING_D_FLAGS]);
    uint64_t buffer = load(&descriptor[SHMRING_D_BUFFER]);
    long long taken = NOT_TAKEN;
    if (buffer >= self->nbuffers) {
        taken = PUBLISH_CORRUPTED;
    } else if (!(flags & SHMRING_DF_EVICTED)) {
        __atomic_store_n(&descriptor[SHMRING_D_FLAGS], flags | SHMRING_DF_EVICTED,
                         __ATOMIC_SEQ_CST);
        __atomic_thread_fence(__ATOMIC_SEQ_CST); /* evicted, then the pins */
        if (!pinned(self, buffer)) {
            taken = (long long)buffer;
        } else if (pool_put(self, buffer) < 0) {
            taken = PUBLISH_CORRUPTED;
        }
    }
    store(&descriptor[SHMRING_D_SEQ], seq);
    return taken;
}

/* Sequenced overwrite: a buffer to write into, from the pool (not pinned), else evicted,
 * oldest frame first. PUBLISH_FALLBACK if every buffer is pinned or held (the general path
 * says which knob to raise), PUBLISH_CORRUPTED for an index out of range. A buffer is
 * checked for pins after it was taken: whoever pins it later finds its frame gone. */
static long long pool_take(Publisher *self) {
    for (uint64_t i = 0; i < self->nbuffers; i++) {
        uint64_t buffer = load(&self->freelist[i]);
        if (buffer == SHMRING_NONE) {
            continue;
        }
        if (buffer >= self->nbuffers) {
            return PUBLISH_CORRUPTED;
        }
        if (__atomic_compare_exchange_n(&self->freelist[i], &buffer, SHMRING_NONE, 0,
                                        __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) {
            __atomic_thread_fence(__ATOMIC_SEQ_CST); /* taken, then the pins */
            if (!pinned(self, buffer)) {
                return (long long)buffer;
            }
            if (pool_put(self, buffer) < 0) {
                return PUBLISH_CORRUPTED;
            }
        }
    }
    uint64_t tail, head;
    if (!load_with_tail(&self->control[SHMRING_C_TAIL], &self->control[SHMRING_C_HEAD], &tail,
                        &head)) {
        return PUBLISH_FALLBACK;
    }
    if (tail > head || head - tail > self->slots || head >= SHMRING_SEQ_LIMIT) {
        return PUBLISH_CORRUPTED;
    }
    /* Position by position from tail's: a position may hold a number past head already
     * (head waits for an older number still being written) */
    long long taken = NOT_TAKEN;
    for (uint64_t seq = tail; seq < tail + self->slots && taken == NOT_TAKEN; seq++) {
        const uint64_t *descriptor =
            self->descriptors + (seq % self->slots) * self->descriptor_words;
        uint64_t held = load(&descriptor[SHMRING_D_SEQ]);
        if (held != SHMRING_NONE && !(held & SHMRING_SEQ_BUSY) && held < SHMRING_SEQ_LIMIT) {
            taken = evict_owned(self, held);
        }
    }
    return taken == NOT_TAKEN ? PUBLISH_FALLBACK : taken;
}

/* Sequenced overwrite: publish the frame in `buffer` (see above) and close the bracket.
 * Returns its number, or PUBLISH_STALLED (the buffer left claimed, in `stalled`) or
 * PUBLISH_CORRUPTED. */
static PyObject *publish_owned(Publisher *self, uint64_t buffer, int claimed,
                               const Description *how) {
    uint64_t *control = self->control, *claimed_seq = &self->record[SHMRING_W_CLAIMED_SEQ];
    long long result = 0;
    uint64_t seq = load(claimed_seq); /* a number kept from a stalled publish, else NONE */
    uint64_t head = load(&control[SHMRING_C_HEAD]);
    uint64_t next = load(&control[SHMRING_C_NEXT_SEQ]);
    if (next < head || next >= SHMRING_SEQ_LIMIT || (seq != SHMRING_NONE && seq >= next)) {
        result = PUBLISH_CORRUPTED; /* (a kept number is one taken before: below next) */
        goto stalled;
    }
    if (next - head > claims_ahead(self)) {
        /* Damage, or a head loaded long before next (this writer was stopped in between):
         * Python judges with loads it makes consistent (check_counters), then retries. */
        goto stalled;
    }
    if (seq == SHMRING_NONE) {
        if (next - head >= 2 * self->slots) {
            goto stalled; /* head waits for a number a stopped or dead writer holds */
        }
        seq = __atomic_fetch_add(&control[SHMRING_C_NEXT_SEQ], 1, __ATOMIC_SEQ_CST);
        store(claimed_seq, seq); /* kept until placed: a stall must not leave a hole */
    }
    uint64_t *descriptor = self->descriptors + (seq % self->slots) * self->descriptor_words;
    uint64_t *seq_word = &descriptor[SHMRING_D_SEQ];
    uint64_t held = 0, give_up = 0;
    result = (long long)seq;
    for (unsigned spins = 0; seq < SHMRING_SEQ_LIMIT; spins++) {
        held = load(seq_word);
        if (held == SHMRING_NONE || (!(held & SHMRING_SEQ_BUSY) && held < seq)) {
            if (__atomic_compare_exchange_n(seq_word, &held, seq | SHMRING_SEQ_BUSY, 0,
                                            __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) {
                break; /* owned */
            }
            continue;
        }
        if ((held & ~SHMRING_SEQ_BUSY) >= seq) { /* a later frame took it: this one is lost */
            store(claimed_seq, SHMRING_NONE);
            result = pool_put(self, buffer) < 0 ? PUBLISH_CORRUPTED : (long long)seq;
            help_head(self);
            goto done;
        }
        /* owned by the writer of an older number, for a few stores */
        if (!(load(&control[SHMRING_C_FLAGS]) & SHMRING_F_SEQUENCED)) {
            goto stalled; /* a repair quiesces the writers: leave the bracket */
        }
        if (spins < POSITION_SPINS) {
            CPU_PAUSE();
        } else {
            Py_BEGIN_ALLOW_THREADS /* the holder may be a thread of this process */
            sched_yield();
            Py_END_ALLOW_THREADS
            uint64_t now = monotonic_ns();
            if (give_up == 0) {
                give_up = now + position_wait_ns;
            } else if (now > give_up) {
                goto stalled;
            }
        }
    }
    if (seq >= SHMRING_SEQ_LIMIT) {
        result = PUBLISH_CORRUPTED;
        goto stalled; /* the buffer stays claimed: leaving the ring gives it back */
    }
    uint64_t old_flags = load(&descriptor[SHMRING_D_FLAGS]);
    uint64_t retired = held != SHMRING_NONE && !(old_flags & SHMRING_DF_EVICTED)
                           ? load(&descriptor[SHMRING_D_BUFFER])
                           : SHMRING_NONE;
    describe_frame(self, descriptor, buffer, how);
    __atomic_store_n(seq_word, seq, __ATOMIC_SEQ_CST); /* visible */
    store(claimed_seq, SHMRING_NONE);
    help_head(self);
    if (retired != SHMRING_NONE && (retired >= self->nbuffers || pool_put(self, retired) < 0)) {
        result = PUBLISH_CORRUPTED; /* published all the same; the buffer waits for a repair */
    }
done:
    if (result < 0) {
        if (claimed) {
            store(&self->record[SHMRING_W_CLAIMED], SHMRING_NONE);
        }
        leave(self);
        return PyLong_FromLongLong(result);
    }
    return published(self, (uint64_t)result, claimed);
stalled:
    store(&self->record[SHMRING_W_CLAIMED], buffer); /* the frame stays this writer's */
    self->stalled = (long long)buffer;
    leave(self);
    return PyLong_FromLongLong(result < 0 ? result : PUBLISH_STALLED);
}

/* Sequenced: publish claimed number `seq` as no frame (DF_SKIP: readers skip it and count
 * it dropped), for a claim given back or one whose buffer index is damaged. */
static void publish_skip(Publisher *self, uint64_t seq) {
    uint64_t *descriptor = self->descriptors + (seq % self->slots) * self->descriptor_words;
    store(&descriptor[SHMRING_D_FLAGS], SHMRING_DF_SKIP);
    __atomic_store_n(&descriptor[SHMRING_D_SEQ], seq, __ATOMIC_SEQ_CST);
    store(&self->record[SHMRING_W_CLAIMED_SEQ], SHMRING_NONE);
    store(&self->record[SHMRING_W_CLAIMED], SHMRING_NONE);
    help_head(self);
    wake_readers(self);
}

/* Sequenced: the number this writer's claim of `buffer` holds, or PUBLISH_CORRUPTED. */
static long long claimed_seq(Publisher *self, uint64_t buffer) {
    uint64_t seq = load(&self->record[SHMRING_W_CLAIMED_SEQ]);
    if (seq == SHMRING_NONE || seq >= SHMRING_SEQ_LIMIT ||
        position_buffer(self, seq) != (long long)buffer) {
        return PUBLISH_CORRUPTED;
    }
    return (long long)seq;
}

/* Sequenced: whether this writer is the only one left (Python then switches the ring back
 * to exclusive mode under the lock: PUBLISH_ALONE). Never without membarrier: a joiner
 * could not quiesce an exclusive writer, so the ring stays sequenced (_ring.py). */
static int alone(Publisher *self) {
    return self->exclusive_when_alone && load(&self->control[SHMRING_C_WRITERS]) <= 1;
}

/* Whether this writer's record keeps a claim a new one must not replace (the record holds
 * one): a Claim's with block runs (claim_open), or a claim's Claim never began its block
 * (Ctrl-C as the claim returned; RingWriter._take_buffer fills that buffer next). Relaxed:
 * the record is this writer's own. */
static int claim_kept(Publisher *self) {
    return self->claim_open ||
           __atomic_load_n(&self->record[SHMRING_W_CLAIMED], __ATOMIC_RELAXED) != SHMRING_NONE;
}

/* publish(frame[, timestamp_ns]): a stamp that is not an int in [0, 2**64) falls back, so
 * that Python's general path says what is wrong with it (or takes a numpy integer). */
static PyObject *Publisher_publish(Publisher *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs < 1 || nargs > 2) {
        PyErr_SetString(PyExc_TypeError, "publish(frame[, timestamp_ns])");
        return NULL;
    }
    Description stamped = {0}, *how = NULL;
    if (nargs == 2) {
        if (!PyLong_CheckExact(args[1])) {
            return PyLong_FromLong(PUBLISH_FALLBACK);
        }
        stamped.timestamp_ns = PyLong_AsUnsignedLongLong(args[1]);
        if (stamped.timestamp_ns == (uint64_t)-1 && PyErr_Occurred()) {
            PyErr_Clear(); /* negative or too large */
            return PyLong_FromLong(PUBLISH_FALLBACK);
        }
        how = &stamped;
    }
    PyObject *frame_object = args[0];
    Py_buffer frame;
    if (PyObject_GetBuffer(frame_object, &frame, PyBUF_STRIDES) < 0) {
        return NULL;
    }
    /* Checked after GetBuffer, which may run Python code (a __buffer__ that closes it). */
    if (self->busy) {
        PyBuffer_Release(&frame);
        return busy_error();
    }
    if (!self->holds_exports || frame.len != self->frame_bytes ||
        !PyBuffer_IsContiguous(&frame, 'C')) {
        PyBuffer_Release(&frame); /* closed, or strided: the general path (numpy copies it) */
        return PyLong_FromLong(PUBLISH_FALLBACK);
    }
    if (claim_kept(self)) { /* the general path refuses, or fills the kept buffer */
        PyBuffer_Release(&frame);
        return PyLong_FromLong(PUBLISH_FALLBACK);
    }
    long long seq = PUBLISH_FALLBACK, buffer = PUBLISH_FALLBACK;
    int go = enter(self);
    int owned = go == GO_SEQUENCED && self->overwrite; /* its number comes at the publish */
    if (owned) {
        seq = 0; /* (taken by publish_owned) */
        buffer = alone(self) ? PUBLISH_ALONE : pool_take(self);
    } else if (go == GO_SEQUENCED) {
        seq = alone(self) ? PUBLISH_ALONE : sequence_claim(self);
        if (seq >= 0 && (buffer = position_buffer(self, seq)) < 0) {
            publish_skip(self, (uint64_t)seq);
            seq = PUBLISH_CORRUPTED;
        }
    } else if (go == GO_ALONE && (seq = next_seq(self)) >= 0) {
        buffer = take_buffer(self);
    }
    if (seq < 0 || buffer < 0) {
        leave(self);
        PyBuffer_Release(&frame);
        if (buffer == POP_FAILED) {
            return NULL;
        }
        return PyLong_FromLongLong(seq < 0 ? seq : buffer);
    }
    char *destination = self->buffers + (uint64_t)buffer * (uint64_t)self->buffer_stride;
    int stream = go == GO_SEQUENCED && !owned && self->stream_copies; /* positions' buffers */
    if (frame.len >= COPY_WITHOUT_GIL_BYTES) {
        Py_BEGIN_ALLOW_THREADS
        copy_frame(destination, frame.buf, frame.len, stream);
        Py_END_ALLOW_THREADS
    } else {
        copy_frame(destination, frame.buf, frame.len, stream);
    }
    PyBuffer_Release(&frame);
    if (owned) {
        return publish_owned(self, (uint64_t)buffer, 0, how);
    }
    return publish_frame(self, (uint64_t)seq, (uint64_t)buffer, 0, how, go == GO_SEQUENCED);
}

/* Take a buffer for a claim: its index (now this writer's claim, W_CLAIMED), a negative
 * PUBLISH_* code, or POP_FAILED with an exception set. */
static long long claim_buffer_index(Publisher *self, int locked) {
    if (self->busy) {
        busy_error();
        return POP_FAILED;
    }
    if (!self->holds_exports) {
        return PUBLISH_FALLBACK; /* closed */
    }
    if (claim_kept(self)) { /* a second claim would make the record forget the first */
        return PUBLISH_FALLBACK;
    }
    long long buffer = PUBLISH_FALLBACK;
    int go = enter_as(self, locked);
    if (go == GO_SEQUENCED && self->overwrite) {
        buffer = alone(self) ? PUBLISH_ALONE : pool_take(self);
    } else if (go == GO_SEQUENCED) {
        long long seq = alone(self) ? PUBLISH_ALONE : sequence_claim(self);
        buffer = seq < 0 ? seq : position_buffer(self, (uint64_t)seq);
        if (seq >= 0 && buffer < 0) {
            publish_skip(self, (uint64_t)seq);
        }
    } else if (go == GO_ALONE) {
        buffer = take_buffer(self);
    }
    if (buffer >= 0) {
        store(&self->record[SHMRING_W_CLAIMED], (uint64_t)buffer);
    }
    leave(self);
    return buffer;
}

static PyObject *claim_buffer(Publisher *self, int locked) {
    long long buffer = claim_buffer_index(self, locked);
    return buffer == POP_FAILED ? NULL : PyLong_FromLongLong(buffer);
}

static PyObject *Publisher_claim_buffer(Publisher *self, PyObject *Py_UNUSED(ignored)) {
    return claim_buffer(self, 0);
}

static PyObject *Publisher_claim_buffer_locked(Publisher *self, PyObject *Py_UNUSED(ignored)) {
    return claim_buffer(self, 1);
}

/* Publish claimed `buffer` (as `how` says): the steps of a plain Claim's exit and of
 * publish_described(). */
static PyObject *publish_claim(Publisher *self, uint64_t buffer, const Description *how,
                               int locked) {
    if (!self->holds_exports) {
        return PyLong_FromLong(PUBLISH_FALLBACK); /* closed */
    }
    if (buffer >= self->nbuffers) {
        PyErr_Format(PyExc_ValueError, "Publisher: no buffer %llu", (unsigned long long)buffer);
        return NULL;
    }
    long long seq = PUBLISH_FALLBACK;
    int go = enter_as(self, locked);
    if (go == GO_SEQUENCED && self->overwrite) {
        return publish_owned(self, buffer, 1, how);
    }
    if (go == GO_SEQUENCED) {
        seq = claimed_seq(self, buffer);
    } else if (go == GO_ALONE) {
        seq = next_seq(self);
    }
    if (seq < 0) {
        leave(self);
        return PyLong_FromLongLong(seq);
    }
    return publish_frame(self, (uint64_t)seq, buffer, 1, how, go == GO_SEQUENCED);
}

/* The claimed buffer's index and the `locked` flag of a call on a claim; -1 with an
 * exception (also while another call on this writer is under way). */
static int claim_arguments(Publisher *self, PyObject *buffer_object, PyObject *locked_object,
                           uint64_t *buffer, int *locked) {
    *buffer = PyLong_AsUnsignedLongLong(buffer_object);
    if (*buffer == (uint64_t)-1 && PyErr_Occurred()) {
        return -1;
    }
    *locked = PyObject_IsTrue(locked_object); /* may run Python code (__bool__): then busy */
    if (*locked < 0) {
        return -1;
    }
    if (self->busy) {
        busy_error();
        return -1;
    }
    return 0;
}

/* publish_described(buffer, timestamp_ns, shape, meta, locked): publish_claim() for any
 * frame the general path filled: its stamp, shape (a tuple of ndim ints, or None) and
 * metadata (bytes), which the caller has checked against the ring's limits. With `locked`
 * the caller holds the header lock (shared mode, overwrite policy). */
static PyObject *Publisher_publish_described(Publisher *self, PyObject *const *args,
                                             Py_ssize_t nargs) {
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "publish_described takes 5 arguments");
        return NULL;
    }
    uint64_t buffer;
    int locked;
    if (claim_arguments(self, args[0], args[4], &buffer, &locked) < 0) {
        return NULL;
    }
    Description how = {0, NULL, NULL, 0, 0};
    how.timestamp_ns = PyLong_AsUnsignedLongLong(args[1]);
    if (how.timestamp_ns == (uint64_t)-1 && PyErr_Occurred()) {
        return NULL;
    }
    uint64_t shape[SHMRING_MAX_NDIM];
    if (args[2] != Py_None) {
        if (!PyTuple_Check(args[2]) || (uint64_t)PyTuple_GET_SIZE(args[2]) != self->ndim) {
            PyErr_SetString(PyExc_ValueError, "publish_described: shape must have ndim sizes");
            return NULL;
        }
        for (uint64_t axis = 0; axis < self->ndim; axis++) {
            shape[axis] = PyLong_AsUnsignedLongLong(PyTuple_GET_ITEM(args[2], axis));
            if (shape[axis] == (uint64_t)-1 && PyErr_Occurred()) {
                return NULL;
            }
        }
        how.shape = shape;
    }
    if (!PyBytes_Check(args[3]) || (uint64_t)PyBytes_GET_SIZE(args[3]) > self->meta_size) {
        PyErr_SetString(PyExc_ValueError, "publish_described: meta must be bytes of meta_size");
        return NULL;
    }
    how.meta = PyBytes_AS_STRING(args[3]);
    how.meta_len = (uint64_t)PyBytes_GET_SIZE(args[3]);
    return publish_claim(self, buffer, &how, locked);
}

/* publish_skip(buffer, count, timestamp_ns, locked): publish claimed `buffer` as a gap, a
 * DF_SKIP descriptor standing for `count` lost frames (readers count them dropped), stamped
 * `timestamp_ns`. The buffer carries no frame; it is reclaimed as a frame's would be. */
static PyObject *Publisher_publish_skip(Publisher *self, PyObject *const *args,
                                        Py_ssize_t nargs) {
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "publish_skip takes 4 arguments");
        return NULL;
    }
    uint64_t buffer;
    int locked;
    if (claim_arguments(self, args[0], args[3], &buffer, &locked) < 0) {
        return NULL;
    }
    Description how = {0, NULL, NULL, 0, 0};
    how.skip = PyLong_AsUnsignedLongLong(args[1]);
    if (how.skip == (uint64_t)-1 && PyErr_Occurred()) {
        return NULL;
    }
    if (how.skip == 0 || how.skip > SHMRING_MAX_SKIP_COUNT) {
        PyErr_SetString(PyExc_ValueError, "publish_skip: count must be 1 to MAX_SKIP_COUNT");
        return NULL;
    }
    how.timestamp_ns = PyLong_AsUnsignedLongLong(args[2]);
    if (how.timestamp_ns == (uint64_t)-1 && PyErr_Occurred()) {
        return NULL;
    }
    return publish_claim(self, buffer, &how, locked);
}

/* abandon_claimed(buffer, locked): give a claimed buffer back unpublished: onto the free
 * list or into the pool, or (sequenced, block policy) publish its number as a skip;
 * PUBLISH_FALLBACK (nothing changed) while a switch or repair is under way, without the
 * lock. */
static PyObject *Publisher_abandon_claimed(Publisher *self, PyObject *const *args,
                                           Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "abandon_claimed takes 2 arguments");
        return NULL;
    }
    uint64_t buffer;
    int locked;
    if (claim_arguments(self, args[0], args[1], &buffer, &locked) < 0) {
        return NULL;
    }
    if (!self->holds_exports || buffer >= self->nbuffers) {
        return PyLong_FromLong(PUBLISH_FALLBACK);
    }
    long long result = PUBLISH_FALLBACK;
    int go = enter_as(self, locked);
    if (go == GO_SEQUENCED && self->overwrite) {
        result = pool_put(self, buffer);
    } else if (go == GO_SEQUENCED) {
        long long seq = claimed_seq(self, buffer);
        if (seq >= 0) {
            publish_skip(self, (uint64_t)seq);
        }
        result = seq < 0 ? seq : 0;
    } else if (go == GO_ALONE) {
        uint64_t count = load(&self->control[SHMRING_C_FREE_COUNT]);
        if (count < self->nbuffers) {
            store(&self->freelist[count], buffer);
            store(&self->control[SHMRING_C_FREE_COUNT], count + 1);
            result = 0;
        } else {
            result = PUBLISH_CORRUPTED;
        }
    }
    if (go != GO_NOT) {
        store(&self->record[SHMRING_W_CLAIMED], SHMRING_NONE);
    }
    leave(self);
    return PyLong_FromLongLong(result);
}

/* ---- count_sleeper, uncount_sleeper: this writer among the sleepers for space -------------
 *
 * A writer about to sleep for space asks to be woken once half the ring is free
 * (C_SPACE_WANTED: waking per released frame would make writer and reader take turns
 * sleeping), counts itself in C_WRITER_WAITERS (readers that release wake C_SPACE only while
 * it is non-zero), then sets W_SLEEPING, by which a reaper of a dead sleeper uncounts it. The
 * add is sequentially consistent and followed by a full fence (as _taker.c's count), so the
 * writer's next look for space cannot pass it, and a
 * releasing reader, which fences between its release and its look (_taker.c,
 * release_and_wake), sees it. Idempotent: a writer already counted only asks for space
 * again. */

static uint32_t *writer_waiters(Publisher *self) {
    return (uint32_t *)&self->control[SHMRING_C_WRITER_WAITERS]; /* the low half (LE) */
}

/* count_sleeper() -> 0; PUBLISH_CORRUPTED (nothing changed) if head and tail are not what
 * they can be (a forged header: the space wanted must not overflow); PUBLISH_FALLBACK
 * (nothing changed) if tail kept moving or the writer is closed: the caller looks again. */
static PyObject *Publisher_count_sleeper(Publisher *self, PyObject *Py_UNUSED(ignored)) {
    uint64_t tail, head;
    if (!self->holds_exports || !load_with_tail(&self->control[SHMRING_C_TAIL],
                                                &self->control[SHMRING_C_HEAD], &tail, &head)) {
        return PyLong_FromLong(PUBLISH_FALLBACK);
    }
    if (tail > head || head - tail > self->slots || head >= SHMRING_SEQ_LIMIT) {
        return PyLong_FromLong(PUBLISH_CORRUPTED);
    }
    uint64_t half = self->slots / 2;
    store(&self->control[SHMRING_C_SPACE_WANTED], tail + (half ? half : 1));
    if (!load(&self->record[SHMRING_W_SLEEPING])) {
        __atomic_fetch_add(writer_waiters(self), 1, __ATOMIC_SEQ_CST);
        __atomic_thread_fence(__ATOMIC_SEQ_CST); /* the add before the next look: see above */
        store(&self->record[SHMRING_W_SLEEPING], 1);
    }
    return PyLong_FromLong(0);
}

static PyObject *Publisher_uncount_sleeper(Publisher *self, PyObject *Py_UNUSED(ignored)) {
    if (self->holds_exports && load(&self->record[SHMRING_W_SLEEPING])) {
        store(&self->record[SHMRING_W_SLEEPING], 0);
        __atomic_fetch_sub(writer_waiters(self), 1, __ATOMIC_SEQ_CST);
    }
    Py_RETURN_NONE;
}

/* behind() -> how many published frames some reader group has not released yet (head minus
 * the release floor, acquire loads as the reclaim makes them); 0 once closed. For the
 * writer's wait for the hot buffer (_writer.py, _await_hot_buffer), which polls it. */
static PyObject *Publisher_behind(Publisher *self, PyObject *Py_UNUSED(ignored)) {
    if (!self->holds_exports) {
        return PyLong_FromLong(0);
    }
    uint64_t head = load(&self->control[SHMRING_C_HEAD]);
    ShmringReclaim ring = reclaim_parts(self);
    uint64_t floor = release_floor(&ring, head);
    return PyLong_FromUnsignedLongLong(floor < head ? head - floor : 0);
}

static PyObject *Publisher_close(Publisher *self, PyObject *Py_UNUSED(ignored)) {
    if (self->busy) {
        PyErr_SetString(shmring_handle_in_use,
                        "RingWriter closed while a write() on it was under way in another "
                        "thread; close it after that write() returns");
        return NULL;
    }
    release_exports(self);
    Py_RETURN_NONE;
}

static PyObject *Publisher_forget(Publisher *self, PyObject *Py_UNUSED(ignored)) {
    if (getpid() == self->pid) {
        return Publisher_close(self, NULL);
    }
    /* In a forked child: the thread that was publishing (if any) does not exist here. */
    self->busy = 0;
    release_exports(self);
    Py_RETURN_NONE;
}

static int Publisher_traverse(Publisher *self, visitproc visit, void *arg) {
    Py_VISIT(self->on_reclaim);
    Py_VISIT(self->views);
    return 0;
}

static int Publisher_clear(Publisher *self) {
    Py_CLEAR(self->on_reclaim);
    Py_CLEAR(self->views);
    return 0;
}

static void Publisher_dealloc(Publisher *self) {
    PyObject_GC_UnTrack(self);
    release_exports(self);
    Publisher_clear(self);
    Py_CLEAR(self->name); /* a str: no cycle, so the reclaim's messages keep it until here */
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMemberDef Publisher_members[] = {
    {"on_reclaim", T_OBJECT, offsetof(Publisher, on_reclaim), 0,
     "A test hook: a callable run inside the publish bracket before each reclaim (what it "
     "raises, the publish raises, nothing published); None (the default) for none."},
    {"stream_copies", T_INT, offsetof(Publisher, stream_copies), READONLY,
     "Whether a frame published in shared mode is copied with non-temporal stores."},
    {"claim_open", T_INT, offsetof(Publisher, claim_open), READONLY,
     "Whether a Claim's with block runs: publish() and claim_buffer() fall back meanwhile."},
    {"stalled", T_LONGLONG, offsetof(Publisher, stalled), READONLY,
     "The buffer the last PUBLISH_STALLED left claimed by this writer (-1 before any)."},
    {NULL, 0, 0, 0, NULL},
};

static PyTypeObject ClaimType;
static PyObject *Publisher_claim(Publisher *self, PyObject *const *args, Py_ssize_t nargs);
static PyObject *Publisher_open_claim(Publisher *self, PyObject *claim);

static PyMethodDef Publisher_methods[] = {
    {"claim", (PyCFunction)(void (*)(void))Publisher_claim, METH_FASTCALL,
     "claim(writer[, timeout]) -> a plain Claim of `writer` (this Publisher's), taken and "
     "published in C while it can be."},
    {"open_claim", (PyCFunction)Publisher_open_claim, METH_O,
     "open_claim(claim): the entered claim's with block runs (claim_open, until it leaves)."},
    {"publish", (PyCFunction)(void (*)(void))Publisher_publish, METH_FASTCALL,
     "publish(frame[, timestamp_ns]) -> sequence number, PUBLISH_FALLBACK or "
     "PUBLISH_CORRUPTED. Without timestamp_ns the frame is stamped now."},
    {"claim_buffer", (PyCFunction)Publisher_claim_buffer, METH_NOARGS,
     "claim_buffer() -> a free buffer's index (now this writer's claim), PUBLISH_FALLBACK or "
     "PUBLISH_CORRUPTED."},
    {"count_sleeper", (PyCFunction)Publisher_count_sleeper, METH_NOARGS,
     "count_sleeper() -> 0: ask for space, count this writer among the sleepers (_publisher.c)."},
    {"uncount_sleeper", (PyCFunction)Publisher_uncount_sleeper, METH_NOARGS,
     "uncount_sleeper(): leave the sleepers' count, if counted (see _publisher.c)."},
    {"behind", (PyCFunction)Publisher_behind, METH_NOARGS,
     "behind() -> published frames some reader group has not released (see _publisher.c)."},
    {"claim_buffer_locked", (PyCFunction)Publisher_claim_buffer_locked, METH_NOARGS,
     "claim_buffer() for a caller that holds the header lock (shared mode)."},
    {"publish_described", (PyCFunction)(void (*)(void))Publisher_publish_described,
     METH_FASTCALL,
     "publish_described(buffer, timestamp_ns, shape, meta, locked) -> the sequence number "
     "of claimed `buffer`, now published, for a frame with its stamp, shape (tuple or None) "
     "and metadata (bytes)."},
    {"publish_skip", (PyCFunction)(void (*)(void))Publisher_publish_skip, METH_FASTCALL,
     "publish_skip(buffer, count, timestamp_ns, locked) -> publish_described() for a gap: no "
     "frame, `count` frames dropped (DF_SKIP)."},
    {"abandon_claimed", (PyCFunction)(void (*)(void))Publisher_abandon_claimed, METH_FASTCALL,
     "abandon_claimed(buffer, locked) -> 0 (the buffer is free again), PUBLISH_FALLBACK "
     "(shared mode and not locked: nothing changed) or PUBLISH_CORRUPTED."},
    {"close", (PyCFunction)Publisher_close, METH_NOARGS,
     "Drop the exports of the ring's mappings; publish() falls back from then on."},
    {"forget", (PyCFunction)Publisher_forget, METH_NOARGS,
     "close() in a forked child, whatever the parent's threads were doing."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject PublisherType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "shmring._fastpath.Publisher",
    .tp_doc = "The exclusive writer's write() and claim() over one ring (see _publisher.c).",
    .tp_basicsize = sizeof(Publisher),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Publisher_init,
    .tp_dealloc = (destructor)Publisher_dealloc,
    .tp_traverse = (traverseproc)Publisher_traverse,
    .tp_clear = (inquiry)Publisher_clear,
    .tp_methods = Publisher_methods,
    .tp_members = Publisher_members,
};

/* ---- Claim: `with writer.claim() as slot:` ---------------------------------------------
 *
 * shmring.Claim. A claim of a ring-shaped frame, stamped when published, without metadata
 * (`plain`), made while its writer is on the fast path (Publisher.claim), takes its buffer
 * on entering and publishes it on leaving right here, one C call each way; every other
 * claim, and a plain one whose C step falls back, runs RingWriter's general steps
 * (_enter_claim, _exit_claim; a plain one still publishes here when it can). While its
 * with block runs, the writer's Publisher keeps claim_open set (open_claim), so that the C
 * steps refuse a second claim or a write; a Claim freed without leaving its block (Ctrl-C
 * as the block ended) clears it as it goes, and the writer's next write or claim fills the
 * buffer its record still claims (RingWriter._take_buffer). */

typedef struct {
    PyObject_HEAD
    PyObject *writer;    /* the RingWriter */
    Publisher *fast;     /* made on the writer's fast path: its Publisher, else NULL */
    Publisher *open_in;  /* the Publisher whose claim_open this claim set, until it leaves */
    PyObject *timeout, *shape, *timestamp_ns, *meta, *deadline, *seq; /* NULL reads None */
    PyObject *weakrefs;
    long long buffer;    /* the claimed buffer, -1 until entered */
    int plain;           /* ring-shaped, stamped when published, no metadata */
    int finished;        /* published or given back: leaving again would do it twice */
} Claim;

static PyObject *str_enter_claim, *str_exit_claim, *empty_meta;
static PyObject *deadline_from; /* shmring._timing.deadline_from: a claim's timeout, at entry */

static Claim *new_claim(PyObject *writer, PyObject *timeout) {
    Claim *self = PyObject_GC_New(Claim, &ClaimType);
    if (self == NULL) {
        return NULL;
    }
    self->writer = Py_NewRef(writer);
    self->fast = self->open_in = NULL;
    self->timeout = timeout == Py_None ? NULL : Py_NewRef(timeout);
    self->shape = self->timestamp_ns = self->deadline = self->seq = self->weakrefs = NULL;
    self->meta = Py_NewRef(empty_meta);
    self->buffer = -1;
    self->plain = 1;
    self->finished = 0;
    PyObject_GC_Track(self);
    return self;
}

/* Claim(writer, timeout, shape, timestamp_ns, meta): RingWriter.claim() checked them. */
static PyObject *Claim_new(PyTypeObject *Py_UNUSED(type), PyObject *args, PyObject *kwargs) {
    PyObject *writer, *timeout, *shape, *timestamp_ns, *meta;
    if ((kwargs != NULL && PyDict_GET_SIZE(kwargs) != 0) ||
        !PyArg_ParseTuple(args, "OOOOS:Claim", &writer, &timeout, &shape, &timestamp_ns,
                          &meta)) {
        if (!PyErr_Occurred()) {
            PyErr_SetString(PyExc_TypeError, "Claim takes positional arguments only");
        }
        return NULL;
    }
    Claim *self = new_claim(writer, timeout);
    if (self == NULL) {
        return NULL;
    }
    self->shape = shape == Py_None ? NULL : Py_NewRef(shape);
    self->timestamp_ns = timestamp_ns == Py_None ? NULL : Py_NewRef(timestamp_ns);
    Py_SETREF(self->meta, Py_NewRef(meta));
    self->plain = shape == Py_None && timestamp_ns == Py_None && PyBytes_GET_SIZE(meta) == 0;
    return (PyObject *)self;
}

/* publisher.claim(writer[, timeout]): a plain claim on the fast path (see above). */
static PyObject *Publisher_claim(Publisher *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs < 1 || nargs > 2) {
        PyErr_SetString(PyExc_TypeError, "claim(writer[, timeout])");
        return NULL;
    }
    Claim *claim = new_claim(args[0], nargs == 2 ? args[1] : Py_None);
    if (claim != NULL && self->views != NULL) {
        claim->fast = (Publisher *)Py_NewRef(self);
    }
    return (PyObject *)claim;
}

/* The with block begins: `publisher` keeps claim_open set until the claim leaves. */
static void opened(Claim *self, Publisher *publisher) {
    publisher->claim_open = 1;
    Py_XSETREF(self->open_in, (Publisher *)Py_NewRef(publisher));
}

/* The with block ends (or the claim is freed): claim_open cleared, first of all. */
static void closed(Claim *self) {
    if (self->open_in != NULL) {
        self->open_in->claim_open = 0;
        Py_CLEAR(self->open_in);
    }
}

/* publisher.open_claim(claim): the general path's claim, entered (it holds its buffer). */
static PyObject *Publisher_open_claim(Publisher *self, PyObject *claim) {
    if (!PyObject_TypeCheck(claim, &ClaimType) || ((Claim *)claim)->buffer < 0) {
        PyErr_SetString(PyExc_ValueError, "open_claim() takes a Claim that holds a buffer");
        return NULL;
    }
    opened((Claim *)claim, self);
    Py_RETURN_NONE;
}

static PyObject *Claim_enter(Claim *self, PyObject *Py_UNUSED(ignored)) {
    if (self->buffer >= 0 || self->finished) {
        PyErr_SetString(shmring_handle_in_use, "a Claim can be entered once; call claim() again");
        return NULL;
    }
    Publisher *fast = self->fast;
    if (fast != NULL) {
        if (self->timeout != NULL) { /* its publish (or abandon) waits up to the deadline */
            PyObject *deadline = PyObject_CallOneArg(deadline_from, self->timeout);
            if (deadline == NULL) {
                return NULL;
            }
            if (deadline == Py_None) {
                Py_CLEAR(deadline);
            }
            Py_XSETREF(self->deadline, deadline);
        }
        long long buffer = claim_buffer_index(fast, 0);
        if (buffer == POP_FAILED) {
            return NULL;
        }
        PyObject *views = fast->views; /* emptied when the ring closes (or by the reclaim's
                                          test hook): then the general path, which adopts
                                          the buffer the record claims or says it closed */
        if (buffer >= 0 && views != NULL && buffer < PyList_GET_SIZE(views)) {
            self->buffer = buffer;
            opened(self, fast);
            return Py_NewRef(PyList_GET_ITEM(views, buffer));
        }
    }
    return PyObject_CallMethodOneArg(self->writer, str_enter_claim, (PyObject *)self);
}

/* __exit__(exc_type, exc, tb): publish the claimed buffer, or give it back on an exception. */
static PyObject *Claim_exit(Claim *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "Claim.__exit__ takes 3 arguments");
        return NULL;
    }
    if (self->buffer < 0 || self->finished) {
        PyErr_SetString(shmring_handle_in_use,
                        "a Claim is left once, after it was entered; call claim() again");
        return NULL;
    }
    Publisher *publisher = self->open_in;
    Py_XINCREF(publisher);
    closed(self); /* first: the publish counts itself (or runs in C) */
    int failed = args[0] != Py_None;
    if (!failed && self->plain && publisher != NULL) {
        PyObject *seq = publisher->busy ? busy_error()
                                        : publish_claim(publisher, (uint64_t)self->buffer, NULL, 0);
        Py_DECREF(publisher);
        if (seq == NULL) {
            return NULL;
        }
        if (PyLong_AsLongLong(seq) >= 0) {
            Py_XSETREF(self->seq, seq);
            self->finished = 1;
            Py_RETURN_NONE;
        }
        Py_DECREF(seq); /* shared mode, say: the general path */
    } else {
        Py_XDECREF(publisher);
    }
    PyObject *seq = PyObject_CallMethodObjArgs(self->writer, str_exit_claim, (PyObject *)self,
                                               failed ? Py_True : Py_False, NULL);
    if (seq == NULL) {
        return NULL; /* (a publish that timed out: AsyncClaim leaves again) */
    }
    self->finished = 1;
    if (seq == Py_None) {
        Py_DECREF(seq);
    } else {
        Py_XSETREF(self->seq, seq);
    }
    Py_RETURN_NONE;
}

static int Claim_traverse(Claim *self, visitproc visit, void *arg) {
    Py_VISIT(self->writer);
    Py_VISIT(self->fast);
    Py_VISIT(self->open_in);
    Py_VISIT(self->timeout);
    Py_VISIT(self->shape);
    Py_VISIT(self->timestamp_ns);
    Py_VISIT(self->meta);
    Py_VISIT(self->deadline);
    Py_VISIT(self->seq);
    return 0;
}

static int Claim_clear(Claim *self) {
    closed(self);
    Py_CLEAR(self->writer);
    Py_CLEAR(self->fast);
    Py_CLEAR(self->timeout);
    Py_CLEAR(self->shape);
    Py_CLEAR(self->timestamp_ns);
    Py_CLEAR(self->meta);
    Py_CLEAR(self->deadline);
    Py_CLEAR(self->seq);
    return 0;
}

static void Claim_dealloc(Claim *self) {
    PyObject_GC_UnTrack(self);
    if (self->weakrefs != NULL) {
        PyObject_ClearWeakRefs((PyObject *)self);
    }
    Claim_clear(self);
    PyObject_GC_Del(self);
}

static PyMemberDef Claim_members[] = {
    {"seq", T_OBJECT, offsetof(Claim, seq), READONLY,
     "The published frame's sequence number (None until published)."},
    {"_writer", T_OBJECT, offsetof(Claim, writer), READONLY, "The RingWriter."},
    {"_buffer", T_LONGLONG, offsetof(Claim, buffer), 0, "The claimed buffer (-1: none yet)."},
    {"_deadline", T_OBJECT, offsetof(Claim, deadline), 0,
     "The monotonic deadline of its waits (None: none)."},
    {"_timeout", T_OBJECT, offsetof(Claim, timeout), READONLY, "claim()'s timeout."},
    {"_shape", T_OBJECT, offsetof(Claim, shape), READONLY, "The frame's own shape, or None."},
    {"_timestamp_ns", T_OBJECT, offsetof(Claim, timestamp_ns), READONLY,
     "The caller's stamp, or None (stamped when published)."},
    {"_meta", T_OBJECT, offsetof(Claim, meta), READONLY, "The frame's metadata (bytes)."},
    {NULL, 0, 0, 0, NULL},
};

static PyMethodDef Claim_methods[] = {
    {"__enter__", (PyCFunction)Claim_enter, METH_NOARGS,
     "Take a buffer (waiting up to claim()'s timeout); the writable slot."},
    {"__exit__", (PyCFunction)(void (*)(void))Claim_exit, METH_FASTCALL,
     "Publish the slot, or give it back unpublished if the block raised."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject ClaimType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "shmring.Claim",
    .tp_doc = "A buffer claimed for one frame; use as a context manager.\n\n"
              "Entering yields a writable ndarray inside the shared segment. Leaving the block "
              "normally publishes it (then `seq` holds its sequence number); leaving by an "
              "exception abandons it, and readers never see it.",
    .tp_basicsize = sizeof(Claim),
    .tp_weaklistoffset = offsetof(Claim, weakrefs),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = Claim_new,
    .tp_dealloc = (destructor)Claim_dealloc,
    .tp_traverse = (traverseproc)Claim_traverse,
    .tp_clear = (inquiry)Claim_clear,
    .tp_methods = Claim_methods,
    .tp_members = Claim_members,
};

static PyObject *position_patience(PyObject *Py_UNUSED(module), PyObject *nanoseconds) {
    uint64_t wait = PyLong_AsUnsignedLongLong(nanoseconds);
    if (wait == (uint64_t)-1 && PyErr_Occurred()) {
        return NULL;
    }
    uint64_t previous = position_wait_ns;
    position_wait_ns = wait;
    return PyLong_FromUnsignedLongLong(previous);
}

static PyMethodDef publisher_functions[] = {
    {"position_patience", position_patience, METH_O,
     "position_patience(ns) -> the previous value: how long this thread's publishes wait for "
     "a position another writer holds before PUBLISH_STALLED."},
    {NULL, NULL, 0, NULL},
};

int shmring_add_publisher(PyObject *module) {
#ifdef HAVE_VECTOR_COPY
    __builtin_cpu_init();
    vector_copy_available = __builtin_cpu_supports("avx2");
    unsigned int eax, ebx, ecx, edx;
    int fsrm = __get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx) && (edx >> 4 & 1);
    aligned_copy_bytes = fsrm ? ALIGNED_COPY_ALWAYS_BYTES : VECTOR_COPY_BYTES;
#endif
    if (deadline_from == NULL) { /* one interpreter: kept for the process's life */
        PyObject *timing = PyImport_ImportModule("shmring._timing");
        if (timing == NULL) {
            return -1;
        }
        deadline_from = PyObject_GetAttrString(timing, "deadline_from");
        Py_DECREF(timing);
        if (deadline_from == NULL) {
            return -1;
        }
    }
    str_enter_claim = PyUnicode_InternFromString("_enter_claim");
    str_exit_claim = PyUnicode_InternFromString("_exit_claim");
    empty_meta = PyBytes_FromStringAndSize(NULL, 0);
    if (str_enter_claim == NULL || str_exit_claim == NULL || empty_meta == NULL ||
        PyType_Ready(&PublisherType) < 0 || PyType_Ready(&ClaimType) < 0 ||
        PyModule_AddObjectRef(module, "Publisher", (PyObject *)&PublisherType) < 0 ||
        PyModule_AddObjectRef(module, "Claim", (PyObject *)&ClaimType) < 0 ||
        PyModule_AddFunctions(module, publisher_functions) < 0 ||
        PyModule_AddIntConstant(module, "PUBLISH_FALLBACK", PUBLISH_FALLBACK) < 0 ||
        PyModule_AddIntConstant(module, "PUBLISH_CORRUPTED", PUBLISH_CORRUPTED) < 0 ||
        PyModule_AddIntConstant(module, "PUBLISH_ALONE", PUBLISH_ALONE) < 0 ||
        PyModule_AddIntConstant(module, "PUBLISH_STALLED", PUBLISH_STALLED) < 0) {
        return -1;
    }
    return 0;
}
