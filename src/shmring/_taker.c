/* shmring._fastpath.Taker and FrameBase: how a reader that is its own group takes its next
 * frame (block policy: take, wait; overwrite policy: take_pinned, further down).
 *
 * Rules (beyond _fastpath.c's): _reader.py hands a Taker the views of the control block and
 * the descriptor table, the list of buffer arrays, and shmring.Frame, a Python subclass of
 * FrameBase with no fields of its own. take() builds the Frame of a published, ring-shaped
 * frame without metadata whose buffer index is in range, and answers None for anything
 * else: not published yet, an own shape or metadata, a skip, an index out of range (the
 * general path then reports RingCorrupted). It records nothing: the caller holds the frame
 * (its held list, R_RELEASE) and moves on, as for a frame it built itself. A frame for
 * read() or latest() is collectable (released when garbage-collected: the caller may drop
 * it); iteration's is not (the reader releases it at the next step). The frame cannot be reused
 * under it meanwhile: it is at or past the reader's release cursor. wait() is one sleep of
 * the caller's wait loop, done after the caller counted itself as a sleeper (C_READER_WAITERS,
 * then the barrier), in the same order as Python's loop: read C_FRAMES, look for the frame
 * and for the end of the stream, FUTEX_WAIT on C_FRAMES while it is unchanged; then, before
 * it looks again, the file's size (a ring truncated meanwhile raises RingCorrupted through
 * check_size instead of faulting).
 *
 * Theory: a reader woken from FUTEX_WAIT runs with cold caches, where each line of Python
 * between the wake-up and the frame reaching the caller costs several times its warm price
 * and adds to the wake-up's latency. Waking in C and building the Frame there leaves the
 * caller a few stores.
 */
#include "_fastpath.h"

#include <errno.h>
#include <linux/futex.h>
#include <structmember.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

/* ---- FrameBase: the fields of shmring.Frame --------------------------------------------- */

typedef struct {
    PyObject_HEAD
    PyObject *reader; /* "_reader": the RingReader until the frame is released, then None */
    PyObject *array;
    PyObject *meta; /* "_meta": bytes */
    unsigned long long seq;
    unsigned long long timestamp_ns;
    unsigned long long dropped;
} FrameBase;

static int unsigned_field(PyObject *value, const char *name, unsigned long long *out) {
    if (!PyLong_Check(value)) {
        PyErr_Format(PyExc_TypeError, "Frame: %s must be an int, got %.100s", name,
                     Py_TYPE(value)->tp_name);
        return -1;
    }
    *out = PyLong_AsUnsignedLongLong(value); /* OverflowError if negative or too large */
    return *out == (unsigned long long)-1 && PyErr_Occurred() ? -1 : 0;
}

static PyObject *FrameBase_new(PyTypeObject *type, PyObject *args, PyObject *kwargs) {
    static char *keywords[] = {"reader", "array", "seq", "timestamp_ns", "dropped", "meta", NULL};
    PyObject *reader, *array, *seq, *timestamp_ns, *dropped, *meta;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOOOO!:Frame", keywords, &reader, &array,
                                     &seq, &timestamp_ns, &dropped, &PyBytes_Type, &meta)) {
        return NULL;
    }
    unsigned long long fields[3];
    if (unsigned_field(seq, "seq", &fields[0]) < 0 ||
        unsigned_field(timestamp_ns, "timestamp_ns", &fields[1]) < 0 ||
        unsigned_field(dropped, "dropped", &fields[2]) < 0) {
        return NULL;
    }
    FrameBase *self = (FrameBase *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    self->reader = Py_NewRef(reader);
    self->array = Py_NewRef(array);
    self->meta = Py_NewRef(meta);
    self->seq = fields[0];
    self->timestamp_ns = fields[1];
    self->dropped = fields[2];
    return (PyObject *)self;
}

static int FrameBase_traverse(FrameBase *self, visitproc visit, void *arg) {
    Py_VISIT(self->reader);
    Py_VISIT(self->array);
    Py_VISIT(self->meta);
    return 0;
}

static int FrameBase_clear(FrameBase *self) {
    Py_CLEAR(self->reader);
    Py_CLEAR(self->array);
    Py_CLEAR(self->meta);
    return 0;
}

static void FrameBase_dealloc(FrameBase *self) {
    PyObject_GC_UnTrack(self);
    FrameBase_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMemberDef FrameBase_members[] = {
    {"_reader", T_OBJECT, offsetof(FrameBase, reader), 0, NULL},
    {"array", T_OBJECT, offsetof(FrameBase, array), READONLY,
     "The frame: a read-only NumPy view into shared memory."},
    {"_meta", T_OBJECT, offsetof(FrameBase, meta), READONLY, NULL},
    {"seq", T_ULONGLONG, offsetof(FrameBase, seq), READONLY,
     "The frame's sequence number (0 for the ring's first frame)."},
    {"timestamp_ns", T_ULONGLONG, offsetof(FrameBase, timestamp_ns), READONLY,
     "When it was published (time.monotonic_ns() in the writer), or the writer's own stamp."},
    {"dropped", T_ULONGLONG, offsetof(FrameBase, dropped), READONLY,
     "Frames this reader lost just before this one."},
    {NULL, 0, 0, 0, NULL},
};

static PyTypeObject FrameBaseType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "shmring._fastpath.FrameBase",
    .tp_doc = "The fields of shmring.Frame (see _taker.c).",
    .tp_basicsize = sizeof(FrameBase),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_new = FrameBase_new,
    .tp_dealloc = (destructor)FrameBase_dealloc,
    .tp_traverse = (traverseproc)FrameBase_traverse,
    .tp_clear = (inquiry)FrameBase_clear,
    .tp_members = FrameBase_members,
};

/* ---- Taker -------------------------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    Py_buffer header;  /* export that keeps the header mapping alive (see _fastpath.c) */
    int initialized;   /* __init__ ran (it never runs again, even after failing) */
    int holds_exports; /* until close(): the pointers below are valid */
    int busy;          /* a wait is sleeping without the GIL */
    int fd;                  /* the segment's file, to see a truncation after a sleep */
    long long segment_bytes; /* its size */
    PyObject *check_size;    /* Participant.check_size: raises RingCorrupted */
    uint64_t *control;
    uint64_t *descriptors;
    uint64_t slots;
    Py_ssize_t descriptor_words;
    PyObject *buffers;         /* list: the ring's buffers as read-only arrays */
    PyTypeObject *frame_type;  /* shmring.Frame */
    PyObject *no_meta;         /* b"" */
    /* take_pinned(): an overwrite reader's pins (R_PINNED in its record, then its pin line);
     * take_group(): a block group member's hold (R_RELEASE) and its group's cursor (G_CURSOR) */
    uint64_t *record, *reader_records; /* max_readers records, RECORD_WORDS apart */
    uint64_t *group;                   /* this reader's group record, or NULL */
    uint64_t *pin_table; /* overwrite: max_readers pin lines, RECORD_WORDS apart; else NULL */
    uint64_t *pin_line;  /* this reader's (same index as its record), or NULL */
    PyTypeObject *collectable_frame_type; /* a Frame released when garbage-collected */
    uint64_t max_readers, nbuffers;
    /* This reader's pins as it stored them (slot 0: R_PINNED, slot i: pin line word i - 1):
     * the frame's seq (NONE: the slot is free) and buffer; and the top it stored last. */
    uint64_t pin_seq[SHMRING_MAX_PINS], pin_buffer[SHMRING_MAX_PINS];
    uint64_t pin_top;
    uint64_t unbuilt; /* a frame take_group held and returned as (seq, skipped), else NONE */
    pid_t pid; /* the process that made it: close() unpins only there (not in a forked child) */
} Taker;

static void Taker_release_exports(Taker *self) {
    if (self->holds_exports) {
        self->holds_exports = 0;
        self->control = self->descriptors = self->record = self->reader_records = NULL;
        self->group = self->pin_table = self->pin_line = NULL;
        PyBuffer_Release(&self->header);
    }
}

static int Taker_init(Taker *self, PyObject *args, PyObject *kwargs) {
    static char *keywords[] = {
        "header", "control", "descriptors", "buffers", "frame_type", "slots",
        "descriptor_words", "record", "reader_records", "collectable_frame_type", "max_readers",
        "nbuffers", "group", "fd", "segment_bytes", "check_size", "pin_table",
        NULL,
    };
    PyObject *header, *control, *descriptors, *buffers, *frame_type, *record, *readers;
    PyObject *collectable_frame_type, *group, *pin_table;
    Py_ssize_t descriptor_words;
    unsigned long long slots, max_readers, nbuffers;
    int fd;
    long long segment_bytes;
    PyObject *check_size;
    if (self->initialized) {
        PyErr_SetString(PyExc_RuntimeError, "a Taker is initialized once");
        return -1;
    }
    self->initialized = 1; /* once, even if it fails: parsing may run Python code (__index__) */
    if (!PyArg_ParseTupleAndKeywords(
            args, kwargs, "$OOOO!O!O&nOOO!O&O&OiLOO:Taker", keywords, &header, &control,
            &descriptors, &PyList_Type, &buffers, &PyType_Type, &frame_type, shmring_u64, &slots,
            &descriptor_words, &record, &readers, &PyType_Type, &collectable_frame_type,
            shmring_u64, &max_readers, shmring_u64, &nbuffers, &group, &fd, &segment_bytes,
            &check_size, &pin_table)) {
        return -1;
    }
    uint64_t table_words, records_words;
    if (slots == 0 || descriptor_words < SHMRING_D_META_BYTE_OFFSET / 8 || max_readers == 0 ||
        nbuffers == 0 ||
        __builtin_mul_overflow(max_readers, (uint64_t)SHMRING_RECORD_WORDS, &records_words) ||
        __builtin_mul_overflow(slots, (uint64_t)descriptor_words, &table_words)) {
        PyErr_SetString(PyExc_ValueError, "Taker: impossible ring geometry");
        return -1;
    }
    if (!PyType_IsSubtype((PyTypeObject *)frame_type, &FrameBaseType) ||
        !PyType_IsSubtype((PyTypeObject *)collectable_frame_type, &FrameBaseType)) {
        PyErr_SetString(PyExc_TypeError, "Taker: frame types must subclass FrameBase");
        return -1;
    }
    if (PyObject_GetBuffer(header, &self->header, PyBUF_WRITABLE) < 0) {
        return -1;
    }
    self->holds_exports = 1;
    if (!(self->control = shmring_word_view(control, &self->header, "Taker", "control",
                                            SHMRING_CONTROL_WORDS)) ||
        !(self->descriptors = shmring_word_view(descriptors, &self->header, "Taker",
                                                "descriptors", table_words)) ||
        !(self->record = shmring_word_view(record, &self->header, "Taker", "record",
                                           SHMRING_RECORD_WORDS)) ||
        (group != Py_None && !(self->group = shmring_word_view(group, &self->header, "Taker",
                                                               "group", SHMRING_RECORD_WORDS))) ||
        !(self->reader_records = shmring_word_view(readers, &self->header, "Taker",
                                                   "reader records", records_words)) ||
        (pin_table != Py_None &&
         !(self->pin_table = shmring_word_view(pin_table, &self->header, "Taker", "pin table",
                                               records_words)))) {
        Taker_release_exports(self);
        return -1;
    }
    uint64_t index = (uint64_t)(self->record - self->reader_records); /* its record's, in words */
    if (self->record < self->reader_records || index >= records_words ||
        index % SHMRING_RECORD_WORDS != 0) {
        PyErr_SetString(PyExc_ValueError, "Taker: the record is not one of the reader records");
        Taker_release_exports(self);
        return -1;
    }
    self->pin_line = self->pin_table ? self->pin_table + index : NULL;
    for (int slot = 0; slot < SHMRING_MAX_PINS; slot++) {
        self->pin_seq[slot] = SHMRING_NONE;
    }
    self->pin_top = 0;
    self->unbuilt = SHMRING_NONE;
    self->pid = getpid();
    self->no_meta = PyBytes_FromStringAndSize(NULL, 0);
    if (self->no_meta == NULL) {
        Taker_release_exports(self);
        return -1;
    }
    self->slots = slots;
    self->descriptor_words = descriptor_words;
    self->max_readers = max_readers;
    self->nbuffers = nbuffers;
    self->fd = fd;
    self->segment_bytes = segment_bytes;
    self->check_size = Py_NewRef(check_size);
    self->buffers = Py_NewRef(buffers);
    self->frame_type = (PyTypeObject *)Py_NewRef(frame_type);
    self->collectable_frame_type = (PyTypeObject *)Py_NewRef(collectable_frame_type);
    return 0;
}

/* A new Frame of `type` over buffer `buffer` (in range), held by `reader`. */
static PyObject *build_frame(Taker *self, PyTypeObject *type, PyObject *reader, uint64_t seq,
                             uint64_t buffer, uint64_t timestamp_ns, uint64_t dropped) {
    /* Before the allocation: it may collect garbage, whose finalizers may empty the list. */
    PyObject *array = Py_NewRef(PyList_GET_ITEM(self->buffers, buffer));
    FrameBase *frame = (FrameBase *)type->tp_alloc(type, 0);
    if (frame == NULL) {
        Py_DECREF(array);
        return NULL;
    }
    frame->reader = Py_NewRef(reader);
    frame->array = array;
    frame->meta = Py_NewRef(self->no_meta);
    frame->seq = seq;
    frame->timestamp_ns = timestamp_ns;
    frame->dropped = dropped;
    return (PyObject *)frame;
}

/* The Frame of frame `seq` (see Rules), of `type`, counting `dropped` frames lost before
 * it; a new reference to None if there is none to build, NULL with an exception if building
 * it failed. */
static PyObject *take_frame(Taker *self, PyTypeObject *type, PyObject *reader, uint64_t seq,
                            uint64_t dropped) {
    if (!self->holds_exports) {
        Py_RETURN_NONE; /* closed: the caller's general path raises */
    }
    const uint64_t *descriptor = self->descriptors + (seq % self->slots) * self->descriptor_words;
    if (load(&descriptor[SHMRING_D_SEQ]) != seq || load(&descriptor[SHMRING_D_FLAGS]) != 0) {
        Py_RETURN_NONE;
    }
    uint64_t buffer = load(&descriptor[SHMRING_D_BUFFER]);
    if (buffer >= (uint64_t)PyList_GET_SIZE(self->buffers)) {
        Py_RETURN_NONE;
    }
    return build_frame(self, type, reader, seq, buffer, load(&descriptor[SHMRING_D_TIMESTAMP]),
                       dropped);
}

static int positional(const char *method, Py_ssize_t given, Py_ssize_t wanted) {
    if (given != wanted) {
        PyErr_Format(PyExc_TypeError, "Taker.%s takes %zd arguments, got %zd", method, wanted,
                     given);
        return 0;
    }
    return 1;
}

static int sequence_number(PyObject *value, uint64_t *seq) {
    *seq = PyLong_AsUnsignedLongLong(value);
    return *seq == (uint64_t)-1 && PyErr_Occurred() ? -1 : 0;
}

/* take(reader, seq, dropped, collectable) */
static PyObject *Taker_take(Taker *self, PyObject *const *args, Py_ssize_t nargs) {
    uint64_t seq, dropped;
    if (!positional("take", nargs, 4) || sequence_number(args[1], &seq) < 0 ||
        sequence_number(args[2], &dropped) < 0) {
        return NULL;
    }
    int collectable = PyObject_IsTrue(args[3]);
    if (collectable < 0) {
        return NULL;
    }
    PyTypeObject *type = collectable ? self->collectable_frame_type : self->frame_type;
    return take_frame(self, type, args[0], seq, dropped);
}

/* R_RELEASE = `release`, then wake the writers that sleep for the space it frees (C_SPACE,
 * as Participant.wake_writers): the release must be visible before the look for sleeping
 * writers, a full fence (the fast side of the pair fences, see count()); the loads after it
 * are acquire loads. */
static void release_and_wake(Taker *self, uint64_t release) {
    uint64_t *control = self->control;
    store(&self->record[SHMRING_R_RELEASE], release);
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    if (load(&control[SHMRING_C_WRITER_WAITERS]) &&
        release >= load(&control[SHMRING_C_SPACE_WANTED])) {
        shmring_bump_and_wake(&control[SHMRING_C_SPACE]);
    }
}

/* advance(reader, seq): iteration's step for a reader that holds only frame seq - 1: take
 * frame seq and, if it is there, hold it and release seq - 1 in one store (R_RELEASE = seq),
 * then wake writers that sleep for that space. The release must be visible before the look
 * for sleeping writers: a fence (see count()). None,
 * with nothing stored, if take() would answer None. */
static PyObject *Taker_advance(Taker *self, PyObject *const *args, Py_ssize_t nargs) {
    uint64_t seq;
    if (!positional("advance", nargs, 2) || sequence_number(args[1], &seq) < 0) {
        return NULL;
    }
    PyObject *frame = take_frame(self, self->frame_type, args[0], seq, 0);
    if (frame == NULL || frame == Py_None) {
        return frame;
    }
    if (!self->holds_exports) { /* closed by a finalizer the allocation ran */
        Py_DECREF(frame);
        Py_RETURN_NONE;
    }
    release_and_wake(self, seq);
    return frame;
}

/* release(value): this reader's release word R_RELEASE (the lowest frame it still holds or
 * will take; NONE: none, for a group member) is now `value`, and writers sleeping for the
 * space it frees are woken (as in advance). For every release the reader stores outside
 * the header lock: read()'s frames released, frames taken and held, skips passed over. */
static PyObject *Taker_release(Taker *self, PyObject *value_object) {
    uint64_t value;
    if (sequence_number(value_object, &value) < 0) {
        return NULL;
    }
    if (self->holds_exports) {
        release_and_wake(self, value);
    }
    Py_RETURN_NONE;
}

/* count_dropped(total): R_DROPPED, the frames this reader lost in total, for observers
 * (shmring inspect) only: a release store, nothing orders on it. */
static PyObject *Taker_count_dropped(Taker *self, PyObject *total_object) {
    uint64_t total;
    if (sequence_number(total_object, &total) < 0) {
        return NULL;
    }
    if (self->holds_exports) {
        store(&self->record[SHMRING_R_DROPPED], total);
    }
    Py_RETURN_NONE;
}

/* published(seq): whether frame `seq` is published in its descriptor (D_SEQ, acquire: what
 * the caller then reads of the frame is the writer's). */
static PyObject *Taker_published(Taker *self, PyObject *seq_object) {
    uint64_t seq;
    if (sequence_number(seq_object, &seq) < 0) {
        return NULL;
    }
    if (!self->holds_exports) {
        Py_RETURN_FALSE;
    }
    const uint64_t *descriptor = self->descriptors + (seq % self->slots) * self->descriptor_words;
    return PyBool_FromLong(load(&descriptor[SHMRING_D_SEQ]) == seq);
}

/* describe(seq): frame `seq`'s descriptor as (flags, buffer, timestamp_ns, shape, meta), for
 * the frames Python builds itself (own shape, metadata, skips: take() builds the rest);
 * None if it is not published there. D_SEQ is loaded first (acquire), so the fields are the
 * frame's as its writer published them. `shape`: MAX_NDIM words (the caller keeps the
 * ring's ndim of them), or None without DF_OWN_SHAPE; `meta`: the D_FLAGS >> META_LEN_SHIFT
 * bytes of user metadata, cut at the descriptor's end (the caller cuts at meta_size). The
 * caller holds the frame (or pinned it and asks holds() after), so nothing changes it. */
static PyObject *Taker_describe(Taker *self, PyObject *seq_object) {
    uint64_t seq;
    if (sequence_number(seq_object, &seq) < 0) {
        return NULL;
    }
    if (!self->holds_exports) {
        Py_RETURN_NONE;
    }
    const uint64_t *descriptor = self->descriptors + (seq % self->slots) * self->descriptor_words;
    if (load(&descriptor[SHMRING_D_SEQ]) != seq) {
        Py_RETURN_NONE;
    }
    uint64_t flags = load(&descriptor[SHMRING_D_FLAGS]);
    uint64_t buffer = load(&descriptor[SHMRING_D_BUFFER]);
    uint64_t timestamp_ns = load(&descriptor[SHMRING_D_TIMESTAMP]);
    PyObject *shape = Py_None, *meta = NULL;
    if (flags & SHMRING_DF_OWN_SHAPE) {
        shape = PyTuple_New(SHMRING_MAX_NDIM);
        if (shape == NULL) {
            return NULL;
        }
        for (Py_ssize_t axis = 0; axis < SHMRING_MAX_NDIM; axis++) {
            PyObject *size = PyLong_FromUnsignedLongLong(load(&descriptor[SHMRING_D_SHAPE + axis]));
            if (size == NULL) {
                Py_DECREF(shape);
                return NULL;
            }
            PyTuple_SET_ITEM(shape, axis, size);
        }
    } else {
        Py_INCREF(shape);
    }
    uint64_t meta_len = flags & SHMRING_DF_SKIP ? 0 : flags >> SHMRING_META_LEN_SHIFT; /* a count */
    uint64_t room = (uint64_t)self->descriptor_words * 8 - SHMRING_D_META_BYTE_OFFSET;
    meta_len = meta_len < room ? meta_len : room;
    /* Plain byte copies after the acquire load of D_SEQ: the writer stored them before its
     * release store of D_SEQ. */
    meta = PyBytes_FromStringAndSize((const char *)descriptor + SHMRING_D_META_BYTE_OFFSET,
                                     (Py_ssize_t)meta_len);
    if (meta == NULL) {
        Py_DECREF(shape);
        return NULL;
    }
    return Py_BuildValue("(KKKNN)", (unsigned long long)flags, (unsigned long long)buffer,
                         (unsigned long long)timestamp_ns, shape, meta);
}

static PyObject *Taker_wait(Taker *self, PyObject *const *args, Py_ssize_t nargs) {
    uint64_t seq;
    if (!positional("wait", nargs, 3) || sequence_number(args[1], &seq) < 0) {
        return NULL;
    }
    double timeout = PyFloat_AsDouble(args[2]);
    if (timeout == -1.0 && PyErr_Occurred()) {
        return NULL;
    }
    if (!(timeout >= 0 && timeout < 1e9)) { /* also NaN */
        PyErr_Format(PyExc_ValueError, "Taker.wait: bad timeout %R", args[2]);
        return NULL;
    }
    if (self->busy) {
        PyErr_SetString(shmring_handle_in_use,
                        "a RingReader was read from two threads at once; give each thread its "
                        "own RingReader (RingReader.attach) or serialize the calls");
        return NULL;
    }
    if (!self->holds_exports) {
        Py_RETURN_NONE;
    }
    uint64_t *frames = &self->control[SHMRING_C_FRAMES];
    uint32_t observed = (uint32_t)load(frames);
    PyObject *frame = take_frame(self, self->frame_type, args[0], seq, 0);
    if (frame != Py_None) {
        return frame;
    }
    Py_DECREF(frame);
    const uint64_t *descriptor = self->descriptors + (seq % self->slots) * self->descriptor_words;
    if (load(&descriptor[SHMRING_D_SEQ]) == seq ||
        (load(&self->control[SHMRING_C_FLAGS]) & SHMRING_F_CLOSED)) {
        Py_RETURN_NONE; /* there, but not for take(); or the end of the stream */
    }
    time_t seconds = (time_t)timeout;
    struct timespec limit = {seconds, (long)((timeout - (double)seconds) * 1e9)};
    long result;
    int error;
    self->busy = 1;
    Py_BEGIN_ALLOW_THREADS
    result = syscall(SYS_futex, (uint32_t *)frames, FUTEX_WAIT, observed, &limit, NULL, 0);
    error = errno;
    Py_END_ALLOW_THREADS
    self->busy = 0;
    if (result < 0 && error != EAGAIN && error != EINTR && error != ETIMEDOUT) {
        errno = error;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    if (PyErr_CheckSignals() < 0) {
        return NULL; /* Ctrl-C: raise it now, not after another look */
    }
    struct stat file;
    if (fstat(self->fd, &file) == 0 && file.st_size != self->segment_bytes) {
        /* Truncated while we slept: the next look would fault (SIGBUS). */
        PyObject *result = PyObject_CallNoArgs(self->check_size); /* raises RingCorrupted */
        Py_XDECREF(result);
        return result == NULL ? NULL : Py_NewRef(Py_None);
    }
    return take_frame(self, self->frame_type, args[0], seq, 0);
}

/* ---- count, uncount: this reader among the sleepers ---------------------------------------
 *
 * A reader about to sleep counts itself in C_READER_WAITERS (publishers wake the frames futex
 * only while it is non-zero), then sets R_SLEEPING, by which a reaper of a dead sleeper
 * uncounts it. The add is sequentially consistent and followed by a full fence: the
 * reader's next look for its frame, an acquire load, cannot pass it (C11 lets an acquire
 * load pass a seq_cst add; aarch64's LDAPR does), and a publisher, which fences between its
 * publish and its look, sees it (FORMAT.md, "Store-then-load pairs"). No membarrier here: made at
 * every sleep it would cost a system call and an interrupt of every CPU running a participant,
 * which fan-out pays for at every frame; a fence per publish costs neither. A woken reader uncounts
 * itself at once: it is running again, which spinning_pays counts, and publishers stop making
 * wake-up calls for it. */

static uint32_t *reader_waiters(Taker *self) {
    return (uint32_t *)&self->control[SHMRING_C_READER_WAITERS]; /* the low half (LE) */
}

static PyObject *Taker_count(Taker *self, PyObject *Py_UNUSED(ignored)) {
    if (self->holds_exports && !load(&self->record[SHMRING_R_SLEEPING])) {
        __atomic_fetch_add(reader_waiters(self), 1, __ATOMIC_SEQ_CST);
        __atomic_thread_fence(__ATOMIC_SEQ_CST); /* the add before the next look: see above */
        store(&self->record[SHMRING_R_SLEEPING], 1);
    }
    Py_RETURN_NONE;
}

static PyObject *Taker_uncount(Taker *self, PyObject *Py_UNUSED(ignored)) {
    if (self->holds_exports && load(&self->record[SHMRING_R_SLEEPING])) {
        store(&self->record[SHMRING_R_SLEEPING], 0);
        __atomic_fetch_sub(reader_waiters(self), 1, __ATOMIC_SEQ_CST);
    }
    Py_RETURN_NONE;
}

/* ---- take_pinned: an overwrite reader that is its own group -------------------------------
 *
 * The frame at or after `next` (the newest one with `latest`) that is published and not
 * evicted, pinned: one of this reader's pins names its buffer, so the writer will not take
 * it. The pin is a hazard pointer: store it, fence, then look at the frame again; the writer
 * marks a frame evicted (or replaces it), fences, then looks at the pins, so one of the two
 * sees the other. Frames behind the window, evicted or published as skips on the way are
 * counted in the Frame's `dropped` (a skip as the frames it stands for).
 *
 * A reader holds up to MAX_PINS frames: pin slot 0 is R_PINNED, slots 1..7 the words of its
 * pin line (pin table, docs/FORMAT.md), whose top word bounds the writers' scan. A free slot
 * is taken lowest first, so a reader that holds one frame at a time never writes its line.
 * The top is raised before the pin's store (both precede the fence) and lowered after the
 * pin's clear, so a writer that scans up to the top it loads sees every pin that counts. */
#define TAKE_FALLBACK (-1) /* not for this path: the general path (under the lock) decides */
#define TAKE_NO_ROOM (-4)  /* holding one more frame would leave a writer no buffer */
#define TAKE_NO_PIN (-5)   /* this reader holds MAX_PINS frames already */
#define PIN_TRIES 64       /* a writer lapping the reader this often: the general path */

/* This reader's pin word of slot `slot`. */
static uint64_t *pin_word(Taker *self, int slot) {
    return slot == 0 ? &self->record[SHMRING_R_PINNED]
                     : &self->pin_line[SHMRING_PIN_HELD + slot - 1];
}

/* Its lowest free pin slot, or -1 if it holds as many frames as it may. */
static int free_pin_slot(Taker *self) {
    int slots = self->pin_line ? SHMRING_MAX_PINS : 1;
    for (int slot = 0; slot < slots; slot++) {
        if (self->pin_seq[slot] == SHMRING_NONE) {
            return slot;
        }
    }
    return -1;
}

/* Its slot that holds frame `seq`, or -1 (NONE marks a free slot: no frame has it). */
static int pin_slot_of(Taker *self, uint64_t seq) {
    if (seq >= SHMRING_SEQ_LIMIT) {
        return -1;
    }
    for (int slot = 0; slot < SHMRING_MAX_PINS; slot++) {
        if (self->pin_seq[slot] == seq) {
            return slot;
        }
    }
    return -1;
}

/* Clear pin `slot` (release stores: it only frees a buffer), then lower the top over the
 * line's free slots at its end. */
static void clear_pin(Taker *self, int slot) {
    store(pin_word(self, slot), SHMRING_NONE);
    self->pin_seq[slot] = SHMRING_NONE;
    uint64_t top = self->pin_top;
    while (top > 0 && self->pin_seq[top] == SHMRING_NONE) {
        top--;
    }
    if (top != self->pin_top) {
        store(&self->pin_line[SHMRING_PIN_TOP], top);
        self->pin_top = top;
    }
}

/* Whether this reader may pin one more buffer: the frames every reader holds, plus this
 * one, must leave every writer a buffer to write into. */
static int room_to_pin(Taker *self) {
    uint64_t held = 0, pins[SHMRING_MAX_PINS];
    for (int slot = 0; slot < SHMRING_MAX_PINS; slot++) {
        held += self->pin_seq[slot] != SHMRING_NONE;
    }
    for (uint64_t i = 0; i < self->max_readers; i++) {
        const uint64_t *reader = self->reader_records + i * SHMRING_RECORD_WORDS;
        if (reader != self->record && load(&reader[SHMRING_R_STATE]) == SHMRING_STATE_ACTIVE) {
            const uint64_t *line = self->pin_table ? self->pin_table + i * SHMRING_RECORD_WORDS
                                                   : NULL;
            int count = shmring_reader_pins(reader, line, pins);
            for (int j = 0; j < count; j++) {
                held += pins[j] != SHMRING_NONE;
            }
        }
    }
    uint64_t writers = load(&self->control[SHMRING_C_WRITERS]);
    return held + 1 + (writers ? writers : 1) <= self->nbuffers;
}

/* TAKE_NO_PIN or TAKE_NO_ROOM if this reader may not pin one more buffer, else its free
 * slot for it. */
static int slot_to_pin(Taker *self) {
    int slot = free_pin_slot(self);
    if (slot < 0) {
        return TAKE_NO_PIN;
    }
    return room_to_pin(self) ? slot : TAKE_NO_ROOM;
}

/* Whether frame `seq` is still in `descriptor`, not evicted, in `buffer`. A writer that
 * replaces a frame first moves C_TAIL past it (one writer) or takes its D_SEQ (several:
 * seq | SEQ_BUSY) before it changes any other word of its descriptor, so a D_SEQ still
 * `seq` and a tail at or before it mean that every word read before this look was the
 * frame's own. The acquire fence keeps the plain loads before it (describe's copy of the
 * metadata) from passing these loads, as acquire loads alone do not. */
static int still_there(Taker *self, const uint64_t *descriptor, uint64_t seq, uint64_t buffer) {
    __atomic_thread_fence(__ATOMIC_ACQUIRE);
    return load(&descriptor[SHMRING_D_SEQ]) == seq &&
           !(load(&descriptor[SHMRING_D_FLAGS]) & SHMRING_DF_EVICTED) &&
           load(&descriptor[SHMRING_D_BUFFER]) == buffer &&
           load(&self->control[SHMRING_C_TAIL]) <= seq;
}

/* Pin `buffer`, that of frame `seq` in `descriptor`, in free slot `slot`: 1 if, once the
 * pin was visible, the frame was still there (this reader now holds it); else 0, with the
 * pin undone. */
static int pin_buffer(Taker *self, int slot, const uint64_t *descriptor, uint64_t seq,
                      uint64_t buffer) {
    if ((uint64_t)slot > self->pin_top) { /* the writers' scan reaches the slot first */
        store(&self->pin_line[SHMRING_PIN_TOP], (uint64_t)slot);
        self->pin_top = (uint64_t)slot;
    }
    __atomic_store_n(pin_word(self, slot), buffer, __ATOMIC_SEQ_CST);
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    if (still_there(self, descriptor, seq, buffer)) {
        self->pin_seq[slot] = seq;
        self->pin_buffer[slot] = buffer;
        return 1;
    }
    clear_pin(self, slot);
    return 0;
}

/* One look along the window; *again is set when the writer moved it under us. */
static PyObject *pin_once(Taker *self, PyObject *reader, uint64_t next, int latest, int *again) {
    uint64_t tail, head;
    if (!load_with_tail(&self->control[SHMRING_C_TAIL], &self->control[SHMRING_C_HEAD], &tail,
                        &head)) {
        *again = 1; /* the writer kept moving the window */
        Py_RETURN_NONE;
    }
    if (tail > head || head - tail > self->slots || head >= SHMRING_SEQ_LIMIT || next > head) {
        return PyLong_FromLong(TAKE_FALLBACK);
    }
    uint64_t cursor = next, skipped = 0;
    if (cursor < tail) {
        skipped = tail - cursor;
        cursor = tail;
    }
    if (latest && cursor + 1 < head) {
        skipped += head - 1 - cursor;
        cursor = head - 1;
    }
    for (; cursor < head; cursor++) {
        const uint64_t *descriptor =
            self->descriptors + (cursor % self->slots) * self->descriptor_words;
        uint64_t held = load(&descriptor[SHMRING_D_SEQ]); /* then the words it publishes */
        if (held != cursor) {
            if (held != SHMRING_NONE && (held & ~SHMRING_SEQ_BUSY) >= cursor) {
                skipped++; /* replaced, or being evicted (a writer owns it): dropped */
                continue;
            }
            *again = 1; /* not what a window frame can hold: look again */
            Py_RETURN_NONE;
        }
        uint64_t flags = load(&descriptor[SHMRING_D_FLAGS]);
        if (flags & (SHMRING_DF_EVICTED | SHMRING_DF_SKIP)) { /* no frame: dropped */
            skipped += flags & SHMRING_DF_SKIP ? shmring_skip_count(flags) : 1;
            continue;
        }
        uint64_t buffer = load(&descriptor[SHMRING_D_BUFFER]);
        if (flags != 0 || buffer >= self->nbuffers ||
            buffer >= (uint64_t)PyList_GET_SIZE(self->buffers)) {
            return PyLong_FromLong(TAKE_FALLBACK); /* own shape or metadata, or damage */
        }
        int slot = slot_to_pin(self);
        if (slot < 0) {
            return PyLong_FromLong(slot); /* TAKE_NO_PIN, TAKE_NO_ROOM */
        }
        uint64_t timestamp_ns = load(&descriptor[SHMRING_D_TIMESTAMP]); /* checked by the pin */
        if (pin_buffer(self, slot, descriptor, cursor, buffer)) {
            return build_frame(self, self->collectable_frame_type, reader, cursor, buffer,
                               timestamp_ns, skipped);
        }
        *again = 1; /* evicted or replaced meanwhile */
        Py_RETURN_NONE;
    }
    Py_RETURN_NONE; /* nothing new yet */
}

static PyObject *Taker_take_pinned(Taker *self, PyObject *const *args, Py_ssize_t nargs) {
    uint64_t next;
    if (!positional("take_pinned", nargs, 3) || sequence_number(args[1], &next) < 0) {
        return NULL;
    }
    int latest = PyObject_IsTrue(args[2]);
    if (latest < 0) {
        return NULL;
    }
    if (!self->holds_exports) {
        return PyLong_FromLong(TAKE_FALLBACK); /* closed: the general path raises */
    }
    for (int tries = 0; tries < PIN_TRIES; tries++) {
        int again = 0;
        PyObject *result = pin_once(self, args[0], next, latest, &again);
        if (!again) {
            return result;
        }
        Py_DECREF(result);
    }
    return PyLong_FromLong(TAKE_FALLBACK);
}

/* ---- take_group: a member of a block-policy reader group ------------------------------------
 *
 * take_group(reader, held, latest, carried) claims the group's next frame (the newest with `latest`)
 * for this member with a compare-and-swap on G_CURSOR, so members need no lock. Before the
 * swap the member holds the frame (R_RELEASE at most its seq; `held` is the list of the seqs
 * it already holds): a writer that sees the cursor past a frame also sees the member that
 * holds it, since the writer reads group cursors before readers' release words. After the
 * swap, and before any allocation, the seq joins `held`: an allocation may run the garbage
 * collector, whose finalizers may release another frame of this member (_CollectableFrame),
 * and that release computes R_RELEASE from `held`. Returns the Frame; (seq, skipped) for a
 * frame it cannot build (own shape or metadata), which the caller builds, holding it
 * already; None if no frame is new; TAKE_FALLBACK on a state a block ring cannot be in (the
 * general path reports it). Skips it claims before any frame is published return (NONE,
 * their count plus `carried`): the caller passes that back as `carried`, so the next
 * frame's `dropped` reports them (the cursor has moved past them). */
/* The lowest seq in `held_list` (a list of ints), NONE if empty; -1 with an exception. */
static int lowest_held(PyObject *held_list, uint64_t *lowest) {
    if (!PyList_Check(held_list)) {
        PyErr_SetString(PyExc_TypeError, "Taker.take_group: held must be a list");
        return -1;
    }
    *lowest = SHMRING_NONE;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(held_list); i++) {
        uint64_t seq;
        if (sequence_number(PyList_GET_ITEM(held_list, i), &seq) < 0) {
            return -1;
        }
        *lowest = seq < *lowest ? seq : *lowest;
    }
    return 0;
}

/* After take_group's swap: `seq` joins the member's `held` list (see above); on failure
 * R_RELEASE goes back to `held`: the frame is lost to the group (claimed, never handed out),
 * as it would be for a member that dies there. */
static int record_held(PyObject *held_list, uint64_t seq, uint64_t *release, uint64_t held) {
    PyObject *number = PyLong_FromUnsignedLongLong(seq);
    if (number == NULL || PyList_Append(held_list, number) < 0) {
        Py_XDECREF(number);
        store(release, held);
        return -1;
    }
    Py_DECREF(number);
    return 0;
}

static PyObject *Taker_take_group(Taker *self, PyObject *const *args, Py_ssize_t nargs) {
    uint64_t held, passed; /* passed: skips claimed on the way (dropped), and carried ones */
    if (!positional("take_group", nargs, 4) || lowest_held(args[1], &held) < 0 ||
        sequence_number(args[3], &passed) < 0) {
        return NULL;
    }
    int latest = PyObject_IsTrue(args[2]);
    if (latest < 0) {
        return NULL;
    }
    if (!self->holds_exports || self->group == NULL) {
        return PyLong_FromLong(TAKE_FALLBACK);
    }
    uint64_t *cursor_word = &self->group[SHMRING_G_CURSOR];
    uint64_t *release = &self->record[SHMRING_R_RELEASE];
    for (int tries = 0; tries < PIN_TRIES; tries++) {
        /* Cursor, then head, both while tail held still: tail <= cursor <= head <= tail +
         * slots then hold for what was read (each only grows), and anything else is damage. */
        uint64_t tail, cursor, head, again;
        if (!load_with_tail(&self->control[SHMRING_C_TAIL], cursor_word, &tail, &cursor) ||
            !load_with_tail(&self->control[SHMRING_C_TAIL], &self->control[SHMRING_C_HEAD], &again,
                            &head) ||
            again != tail) {
            continue; /* tail moved meanwhile: look again */
        }
        if (tail > head || head - tail > self->slots || head >= SHMRING_SEQ_LIMIT ||
            cursor > head || cursor < tail) {
            return PyLong_FromLong(TAKE_FALLBACK);
        }
        uint64_t seq = latest && cursor + 1 < head ? head - 1 : cursor;
        const uint64_t *descriptor = self->descriptors + (seq % self->slots) * self->descriptor_words;
        if (seq >= head || load(&descriptor[SHMRING_D_SEQ]) != seq) {
            if (passed) { /* only skips: their count rides on the next frame's */
                return Py_BuildValue("(KK)", (unsigned long long)SHMRING_NONE,
                                     (unsigned long long)passed);
            }
            Py_RETURN_NONE; /* nothing new yet */
        }
        __atomic_store_n(release, held < seq ? held : seq, __ATOMIC_SEQ_CST);
        if (!__atomic_compare_exchange_n(cursor_word, &cursor, seq + 1, 0, __ATOMIC_SEQ_CST,
                                         __ATOMIC_SEQ_CST)) {
            store(release, held); /* another member took it: look again */
            continue;
        }
        uint64_t skipped = seq - cursor, buffer = load(&descriptor[SHMRING_D_BUFFER]);
        uint64_t flags = load(&descriptor[SHMRING_D_FLAGS]);
        if (flags & SHMRING_DF_SKIP) { /* no frame (a sequenced ring's skip): the next one */
            passed += skipped + shmring_skip_count(flags);
            store(release, held);
            tries = 0;
            continue;
        }
        skipped += passed;
        if (record_held(args[1], seq, release, held) < 0) {
            return NULL;
        }
        int built_here = flags == 0 && buffer < self->nbuffers &&
                         buffer < (uint64_t)PyList_GET_SIZE(self->buffers);
        if (!built_here) {
            self->unbuilt = seq; /* until the caller's Frame holds it (unbuilt()) */
        }
        PyObject *taken =
            built_here ? build_frame(self, self->collectable_frame_type, args[0], seq, buffer,
                                     load(&descriptor[SHMRING_D_TIMESTAMP]), skipped)
                       : Py_BuildValue("(KK)", (unsigned long long)seq, (unsigned long long)skipped);
        if (taken == NULL) { /* (out of memory) lost to the group, as above */
            self->unbuilt = SHMRING_NONE;
            Py_ssize_t last = PyList_GET_SIZE(args[1]) - 1;
            uint64_t lowest = SHMRING_NONE;
            if (PyList_SetSlice(args[1], last, last + 1, NULL) == 0) { /* a finalizer during */
                lowest_held(args[1], &lowest); /* the allocation may have released others */
            }
            store(release, lowest);
        }
        return taken;
    }
    if (passed) { /* the other members kept winning: what it claimed so far were skips */
        return Py_BuildValue("(KK)", (unsigned long long)SHMRING_NONE, (unsigned long long)passed);
    }
    Py_RETURN_NONE; /* the other members kept winning: the caller looks again */
}

/* unbuilt(): the seq of the frame take_group last returned as (seq, skipped), which the
 * caller holds (in `held`) and builds; NONE if none. Forgets it: the caller asks once it
 * built the Frame, or when the building was cut short, to let the frame go. */
static PyObject *Taker_unbuilt(Taker *self, PyObject *Py_UNUSED(ignored)) {
    uint64_t seq = self->unbuilt;
    self->unbuilt = SHMRING_NONE;
    return PyLong_FromUnsignedLongLong(seq);
}

/* pin(seq): for the general path (group members, frames of their own shape), which holds
 * the header lock but races the lock-free writer all the same: pin frame `seq` if it is
 * published and not evicted; its buffer, or -1 (nothing pinned), TAKE_NO_PIN or TAKE_NO_ROOM
 * (as take_pinned). The caller reads the rest of the frame's descriptor afterwards, then asks
 * holds(seq) whether it was the frame's. */
static PyObject *Taker_pin(Taker *self, PyObject *seq_object) {
    uint64_t seq;
    if (sequence_number(seq_object, &seq) < 0) {
        return NULL;
    }
    if (!self->holds_exports) {
        return PyLong_FromLong(-1);
    }
    const uint64_t *descriptor = self->descriptors + (seq % self->slots) * self->descriptor_words;
    if (load(&descriptor[SHMRING_D_SEQ]) != seq) { /* first: the words after it are seq's */
        return PyLong_FromLong(-1);
    }
    uint64_t buffer = load(&descriptor[SHMRING_D_BUFFER]);
    if (load(&descriptor[SHMRING_D_FLAGS]) & SHMRING_DF_EVICTED || buffer >= self->nbuffers) {
        return PyLong_FromLong(-1);
    }
    int slot = slot_to_pin(self);
    if (slot < 0) {
        return PyLong_FromLong(slot); /* TAKE_NO_PIN, TAKE_NO_ROOM */
    }
    if (!pin_buffer(self, slot, descriptor, seq, buffer)) {
        return PyLong_FromLong(-1);
    }
    return PyLong_FromUnsignedLongLong(buffer);
}

/* holds(seq): whether frame `seq`, pinned by pin(), is still in its descriptor (see
 * still_there): what the caller read of the descriptor since was the frame's own. */
static PyObject *Taker_holds(Taker *self, PyObject *seq_object) {
    uint64_t seq;
    if (sequence_number(seq_object, &seq) < 0) {
        return NULL;
    }
    int slot = pin_slot_of(self, seq);
    if (!self->holds_exports || slot < 0) {
        Py_RETURN_FALSE;
    }
    const uint64_t *descriptor = self->descriptors + (seq % self->slots) * self->descriptor_words;
    return PyBool_FromLong(still_there(self, descriptor, seq, self->pin_buffer[slot]));
}

/* unpin(seq): release frame `seq` of this overwrite reader (its pin cleared: writers may
 * take its buffer again); whether it held it (a second release is no error). */
static PyObject *Taker_unpin(Taker *self, PyObject *seq_object) {
    uint64_t seq;
    if (sequence_number(seq_object, &seq) < 0) {
        return NULL;
    }
    int slot = pin_slot_of(self, seq);
    if (!self->holds_exports || slot < 0) {
        Py_RETURN_FALSE;
    }
    clear_pin(self, slot);
    Py_RETURN_TRUE;
}

/* held(): how many frames this reader holds pinned. */
static PyObject *Taker_held(Taker *self, PyObject *Py_UNUSED(ignored)) {
    long held = 0;
    for (int slot = 0; slot < SHMRING_MAX_PINS; slot++) {
        held += self->pin_seq[slot] != SHMRING_NONE;
    }
    return PyLong_FromLong(held);
}

/* At close, in the process that pinned: clear every pin, unless the file was truncated (a
 * store would fault, SIGBUS; the reader's record is reaped with its pins then). */
static void unpin_all(Taker *self) {
    struct stat file;
    if (!self->holds_exports || getpid() != self->pid || fstat(self->fd, &file) != 0 ||
        file.st_size != self->segment_bytes) {
        return;
    }
    for (int slot = SHMRING_MAX_PINS; slot-- > 0;) {
        if (self->pin_seq[slot] != SHMRING_NONE) {
            clear_pin(self, slot);
        }
    }
}

static PyObject *Taker_close(Taker *self, PyObject *Py_UNUSED(ignored)) {
    if (self->busy) {
        PyErr_SetString(shmring_handle_in_use,
                        "RingReader closed while another thread waits in it for a frame; close "
                        "it from the thread that reads, or after that read returns");
        return NULL;
    }
    unpin_all(self);
    Taker_release_exports(self);
    Py_RETURN_NONE;
}

static PyObject *Taker_forget(Taker *self, PyObject *Py_UNUSED(ignored)) {
    if (getpid() == self->pid) {
        return Taker_close(self, NULL);
    }
    /* In a forked child: the thread that was waiting (if any) does not exist here. */
    self->busy = 0;
    Taker_release_exports(self);
    Py_RETURN_NONE;
}

static int Taker_traverse(Taker *self, visitproc visit, void *arg) {
    Py_VISIT(self->buffers);
    Py_VISIT(self->frame_type);
    Py_VISIT(self->collectable_frame_type);
    Py_VISIT(self->check_size);
    return 0;
}

static int Taker_clear(Taker *self) {
    Py_CLEAR(self->buffers);
    Py_CLEAR(self->frame_type);
    Py_CLEAR(self->collectable_frame_type);
    Py_CLEAR(self->no_meta);
    Py_CLEAR(self->check_size);
    return 0;
}

static void Taker_dealloc(Taker *self) {
    PyObject_GC_UnTrack(self);
    Taker_release_exports(self);
    Taker_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef Taker_methods[] = {
    {"take", (PyCFunction)(void (*)(void))Taker_take, METH_FASTCALL,
     "take(reader, seq, dropped, collectable) -> Frame of frame seq, or None (see _taker.c)."},
    {"advance", (PyCFunction)(void (*)(void))Taker_advance, METH_FASTCALL,
     "advance(reader, seq) -> take()'s answer; if a Frame, this reader now holds seq only."},
    {"release", (PyCFunction)Taker_release, METH_O,
     "release(value): R_RELEASE = value, then wake writers sleeping for that space."},
    {"count_dropped", (PyCFunction)Taker_count_dropped, METH_O,
     "count_dropped(total): R_DROPPED = total (for observers)."},
    {"published", (PyCFunction)Taker_published, METH_O,
     "published(seq) -> whether frame seq is published in its descriptor."},
    {"describe", (PyCFunction)Taker_describe, METH_O,
     "describe(seq) -> (flags, buffer, timestamp_ns, shape, meta) of frame seq, or None."},
    {"wait", (PyCFunction)(void (*)(void))Taker_wait, METH_FASTCALL,
     "wait(reader, seq, timeout) -> take()'s answer after at most one sleep on C_FRAMES."},
    {"take_pinned", (PyCFunction)(void (*)(void))Taker_take_pinned, METH_FASTCALL,
     "take_pinned(reader, next, latest) -> the next (or newest) frame of an overwrite ring, "
     "pinned; None if none is new; TAKE_FALLBACK or TAKE_NO_ROOM (see _taker.c)."},
    {"take_group", (PyCFunction)(void (*)(void))Taker_take_group, METH_FASTCALL,
     "take_group(reader, held, latest, carried) -> the group's next (or newest) frame, now this "
     "member's; (seq, skipped) to build; None; or TAKE_FALLBACK (see _taker.c)."},
    {"unbuilt", (PyCFunction)Taker_unbuilt, METH_NOARGS,
     "unbuilt() -> the frame take_group last returned to be built, now forgotten; NONE."},
    {"pin", (PyCFunction)Taker_pin, METH_O,
     "pin(seq) -> the buffer of frame seq, now pinned by this reader, or -1 (see _taker.c)."},
    {"holds", (PyCFunction)Taker_holds, METH_O,
     "holds(seq) -> whether pinned frame seq is still in its descriptor (see _taker.c)."},
    {"unpin", (PyCFunction)Taker_unpin, METH_O,
     "unpin(seq) -> release pinned frame seq; whether this reader held it (see _taker.c)."},
    {"held", (PyCFunction)Taker_held, METH_NOARGS,
     "held() -> how many frames this reader holds pinned (overwrite policy)."},
    {"count", (PyCFunction)Taker_count, METH_NOARGS,
     "Count this reader among the sleepers, publishers then wake it (see _taker.c)."},
    {"uncount", (PyCFunction)Taker_uncount, METH_NOARGS,
     "Leave the sleepers' count, if counted (see _taker.c)."},
    {"close", (PyCFunction)Taker_close, METH_NOARGS,
     "Unpin every frame this reader holds, then drop the export of the header mapping; "
     "take() and wait() answer None from then on."},
    {"forget", (PyCFunction)Taker_forget, METH_NOARGS,
     "close() in a forked child, whatever the parent's threads were doing."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject TakerType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "shmring._fastpath.Taker",
    .tp_doc = "An own-group block reader's next frame, taken in C (see _taker.c).",
    .tp_basicsize = sizeof(Taker),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Taker_init,
    .tp_dealloc = (destructor)Taker_dealloc,
    .tp_traverse = (traverseproc)Taker_traverse,
    .tp_clear = (inquiry)Taker_clear,
    .tp_methods = Taker_methods,
};

/* ---- Ready: an awaitable that is already done ----------------------------------------------
 *
 * `async for frame in reader` calls __anext__ for every frame. When the frame is published
 * already (frames flowing), _async.py takes it on the spot and returns Ready(frame): awaiting
 * it gives the frame without suspending the task and without a coroutine object, a frame
 * and a StopIteration per step (am_send answers PYGEN_RETURN). A Ready gives its value once,
 * and has a coroutine's send, throw and close: collections.abc.Coroutine counts it as one,
 * so asyncio.create_task(anext(aiter(reader))) takes it as it takes the coroutine of a step
 * that waits.
 *
 * The frame is taken before anybody awaits the step. A step given up before it ran (its
 * task cancelled before its first step, as asyncio.wait_for(..., 0) does, or close()d) must
 * not lose it: a Ready made with an owner hands a value it never gave to
 * owner._unsent(value) (the reader puts the frame back for the next step). Only throw()
 * and close() do, which the event loop and the caller make between steps; a finalizer would
 * not (the cyclic GC runs inside any allocation, in the middle of the reader's next step),
 * so a step dropped unawaited is a step taken, as next() whose result is dropped. */

typedef struct {
    PyObject_HEAD
    PyObject *value; /* NULL once given (or handed back) */
    PyObject *owner; /* NULL, or who takes back a value never given */
} Ready;

static PyObject *Ready_new(PyTypeObject *type, PyObject *args, PyObject *kwargs) {
    PyObject *value, *owner = Py_None;
    if (kwargs != NULL && PyDict_GET_SIZE(kwargs) != 0) {
        PyErr_SetString(PyExc_TypeError, "Ready() takes no keyword arguments");
        return NULL;
    }
    if (!PyArg_UnpackTuple(args, "Ready", 1, 2, &value, &owner)) {
        return NULL;
    }
    Ready *self = (Ready *)type->tp_alloc(type, 0);
    if (self != NULL) {
        self->value = Py_NewRef(value);
        self->owner = owner == Py_None ? NULL : Py_NewRef(owner);
    }
    return (PyObject *)self;
}

static int Ready_traverse(Ready *self, visitproc visit, void *arg) {
    Py_VISIT(self->value);
    Py_VISIT(self->owner);
    return 0;
}

static int Ready_clear(Ready *self) {
    Py_CLEAR(self->value);
    Py_CLEAR(self->owner);
    return 0;
}

/* A value never given goes back to the owner (once). Returns -1 with its error set. */
static int Ready_hand_back(Ready *self) {
    PyObject *value = self->value, *owner = self->owner;
    self->value = self->owner = NULL;
    int result = 0;
    if (value != NULL && owner != NULL) {
        PyObject *done = PyObject_CallMethod(owner, "_unsent", "O", value);
        result = done == NULL ? -1 : 0;
        Py_XDECREF(done);
    }
    Py_XDECREF(value);
    Py_XDECREF(owner);
    return result;
}

static void Ready_dealloc(Ready *self) {
    PyObject_GC_UnTrack(self);
    Ready_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *Ready_await(PyObject *self) {
    return Py_NewRef(self);
}

/* The value, handed over (NULL with RuntimeError if it was given already). */
static PyObject *Ready_take(Ready *self) {
    PyObject *value = self->value;
    if (value == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "cannot reuse an already awaited shmring Ready");
        return NULL;
    }
    self->value = NULL;
    Py_CLEAR(self->owner);
    return value;
}

static PySendResult Ready_send(Ready *self, PyObject *Py_UNUSED(arg), PyObject **result) {
    *result = Ready_take(self);
    return *result == NULL ? PYGEN_ERROR : PYGEN_RETURN;
}

static PyObject *Ready_next(Ready *self) {
    /* For callers that iterate instead of sending: the value rides on StopIteration. */
    PyObject *value = Ready_take(self);
    if (value == NULL) {
        return NULL;
    }
    PyObject *stop = PyObject_CallOneArg(PyExc_StopIteration, value);
    Py_DECREF(value);
    if (stop != NULL) {
        PyErr_SetObject(PyExc_StopIteration, stop);
        Py_DECREF(stop);
    }
    return NULL;
}

static PyObject *Ready_send_method(Ready *self, PyObject *Py_UNUSED(arg)) {
    return Ready_next(self);
}

/* throw() and close() as for a coroutine that has not started: it never suspends; a value
 * never given goes back to the owner. */
static PyObject *Ready_throw(Ready *self, PyObject *args) {
    PyObject *type, *value = NULL, *traceback = NULL;
    if (!PyArg_UnpackTuple(args, "throw", 1, 3, &type, &value, &traceback)) {
        return NULL;
    }
    if (!PyExceptionInstance_Check(type) && !PyExceptionClass_Check(type)) {
        PyErr_SetString(PyExc_TypeError, "throw() needs an exception");
        return NULL; /* nothing given up */
    }
    if (Ready_hand_back(self) < 0) {
        PyErr_WriteUnraisable((PyObject *)self); /* the thrown exception is the one to raise */
    }
    if (PyExceptionInstance_Check(type)) {
        PyErr_SetObject((PyObject *)Py_TYPE(type), type);
    } else {
        PyErr_SetObject(type, value);
    }
    return NULL;
}

static PyObject *Ready_close(Ready *self, PyObject *Py_UNUSED(ignored)) {
    if (Ready_hand_back(self) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyMethodDef Ready_methods[] = {
    {"send", (PyCFunction)Ready_send_method, METH_O, "send(None): raise StopIteration(value)."},
    {"throw", (PyCFunction)Ready_throw, METH_VARARGS, "throw(exc): raise exc (never suspended)."},
    {"close", (PyCFunction)Ready_close, METH_NOARGS, "Drop the value (hand it back)."},
    {NULL, NULL, 0, NULL},
};

static PyAsyncMethods Ready_async = {
    .am_await = Ready_await,
    .am_send = (sendfunc)Ready_send,
};

static PyTypeObject ReadyType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "shmring._fastpath.Ready",
    .tp_doc = "Ready(value, owner=None): an awaitable already done; awaiting it gives value; "
              "throw() or close() before that hand it to owner._unsent(value) (see _taker.c).",
    .tp_basicsize = sizeof(Ready),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = Ready_new,
    .tp_dealloc = (destructor)Ready_dealloc,
    .tp_traverse = (traverseproc)Ready_traverse,
    .tp_clear = (inquiry)Ready_clear,
    .tp_as_async = &Ready_async,
    .tp_iter = PyObject_SelfIter,
    .tp_iternext = (iternextfunc)Ready_next,
    .tp_methods = Ready_methods,
};

int shmring_add_taker(PyObject *module) {
    if (PyType_Ready(&FrameBaseType) < 0 || PyType_Ready(&TakerType) < 0 ||
        PyType_Ready(&ReadyType) < 0 ||
        PyModule_AddObjectRef(module, "FrameBase", (PyObject *)&FrameBaseType) < 0 ||
        PyModule_AddObjectRef(module, "Taker", (PyObject *)&TakerType) < 0 ||
        PyModule_AddObjectRef(module, "Ready", (PyObject *)&ReadyType) < 0 ||
        PyModule_AddIntConstant(module, "TAKE_FALLBACK", TAKE_FALLBACK) < 0 ||
        PyModule_AddIntConstant(module, "TAKE_NO_ROOM", TAKE_NO_ROOM) < 0 ||
        PyModule_AddIntConstant(module, "TAKE_NO_PIN", TAKE_NO_PIN) < 0) {
        return -1;
    }
    return 0;
}
