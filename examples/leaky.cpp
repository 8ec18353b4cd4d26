// A small "service" that leaks the ways production services do:
//  - Session objects kept alive by a refcount bug in a registry (reachable: valgrind is silent)
//  - Message objects dropped without delete (unreachable: a real leak)
//  - worker threads that exit without pthread_join (their 8 MiB stacks stay mapped)
//  - a payload buffer per request in a thread arena
// Prints "READY <pid>" once the damage is done, then waits to be snapshotted.
#include <pthread.h>
#include <unistd.h>
#include <cstdio>
#include <cstring>
#include <map>
#include <string>
#include <vector>

namespace net {
struct Message {
    virtual ~Message() {}
    virtual int kind() const { return 0; }
    char header[24];
};
struct TextMessage : Message {
    int kind() const override { return 1; }
    std::string body;
};
struct Session {
    virtual ~Session() {}
    virtual void touch() { ++hits; }
    long id = 0;
    int refs = 1;
    long hits = 0;
};
}  // namespace net

static std::map<long, net::Session *> registry;   // sessions are never released (refcount bug)

static void *worker(void *arg) {
    long n = (long)arg;
    char *payload = new char[2048];               // allocated in this thread's arena
    snprintf(payload, 2048, "channelid=%ld", 4000 + n % 3);
    (void)payload;                                // leaked with the thread
    return nullptr;                               // exits; nobody joins it
}

int main(int argc, char **argv) {
    setvbuf(stdout, nullptr, _IOLBF, 0);
    int rounds = argc > 1 ? atoi(argv[1]) : 2000;
    for (int i = 0; i < rounds; i++) {
        auto *s = new net::Session;
        s->id = i;
        registry[i] = s;                          // "released" sessions stay here forever
        net::Message *m = (i % 4) ? new net::TextMessage : new net::Message;
        std::snprintf(m->header, sizeof m->header, "channelid=%d", 4000 + i % 7);
        if (i % 10 == 0) delete m;                // most messages are simply dropped: leaked
    }
    for (long t = 0; t < 4; t++) {
        pthread_t th;
        pthread_create(&th, nullptr, worker, (void *)t);   // never joined
    }
    usleep(200000);
    std::printf("READY %d\n", getpid());
    for (;;) pause();
}
