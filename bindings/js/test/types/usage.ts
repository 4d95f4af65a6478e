// The package's usage as README.md shows it, typed: `tsc -p tsconfig.json`
// (make test-js) checks index.d.ts against it. Never run; it only has to
// type-check, and the `@ts-expect-error` lines prove the types are not `any`.
import {
  Client, EventKind, MissionstreamError, Status, PROTOCOL_VERSION, MAX_NAME, MAX_SECRET, MAX_STATE,
  statusName, eventKindName, deriveKey, channelOf, openSealed, channelTag, sealLead, frameBody, applyDelta, makeDelta, checksum, rendezvous,
  Leader, Follower,
} from "missionstream";
import type {
  StreamEvent, StreamInfo, ClientOptions, SessionOptions, State, StatusName, StatusCode, EventKindName, EventKindCode,
} from "missionstream";

export async function readme(): Promise<void> {
  const url = process.env.MISSIONSTREAM_URL ?? "http://127.0.0.1:7379";
  const name = `mission-${Math.random().toString(16).slice(2, 10)}`;

  const leadClient = new Client(url);
  const followClient = new Client(url);

  const leader: Leader = await leadClient.start(name, "password", "leader-code");
  leader.publish({ waypoints: [[47.3977, 8.5456, 30]] });
  await leader.flush();

  const follower: Follower = await followClient.follow(name, "password");
  const arrived: boolean = await follower.waitFor(1, 10000);
  console.log("current:", follower.seq, follower.latest, arrived);

  leader.publish({ waypoints: [] });
  for await (const event of follower) {
    if (event.kind === EventKind.MS_EVENT_STATE && event.seq === 2) {
      console.log("newer:", event.seq, event.data);
      break;
    }
  }
  follower.disconnect();

  try {
    await followClient.follow(name, "wrong password");
  } catch (e) {
    if (!(e instanceof MissionstreamError) || e.status !== Status.MS_ERR_BAD_PASSWORD) throw e;
    const n: StatusName = e.statusName;
    console.log("refused:", n, "-", e.message);
  }

  console.log("listed:", (await followClient.list()).some((s) => s.name === name));
  await leader.stop();
  await leadClient.close();
  await followClient.close();
}

export async function everyExport(): Promise<void> {
  const options: ClientOptions = { timeoutMs: 5000, heartbeatMs: 500, streamTtlS: 0, iterations: 100000, post: true, fetch: globalThis.fetch };
  // A replicated deployment: every node's Webdis, a string or an array.
  const ha = new Client("http://127.0.0.1:7001,http://127.0.0.1:7002", options);
  const ha2 = new Client(["http://127.0.0.1:7001", "http://127.0.0.1:7002"] as const);
  const writes: number = ha.primary + ha2.primary;
  const base: string = ha.base;
  const infos: StreamInfo[] = await ha.list();
  for (const i of infos) {
    const fields: number[] = [i.seq, i.followers, i.updatedMs, i.heardMs, i.heartbeatMs, i.nowMs, i.nowMs - i.heardMs, writes];
    console.log(i.name, fields, base);
  }
  const onEvent = (ev: StreamEvent): void => {
    const kind: EventKindCode = ev.kind;
    const kindName: EventKindName = ev.kindName;
    const status: StatusCode = ev.status;
    const data: string | null = ev.data;
    console.log(kind, kindName, status, data, ev.stream, ev.seq, ev.message, ev.updatedMs, ev.updatedAgeMs, ev.receivedAt, eventKindName(kind), statusName(status));
  };
  const sessionOptions: SessionOptions = { onEvent };
  const l = await ha.start("m", "", "code", { ...sessionOptions, iterations: 100000 });
  const l2 = await ha.reconnect("m", "", "code", sessionOptions);
  const states: State[] = [{ a: 1 }, "{}", new TextEncoder().encode("{}")];
  for (const s of states) l.publish(s);
  await l.flush(1000);
  const seq: number = l.seq + l2.seq;
  const f = await ha2.follow("m", "", sessionOptions);
  const ev: StreamEvent | null | undefined = await f.next(100);
  const fl: [number, string | null, number, boolean, boolean, boolean, boolean] = [f.seq, f.latest, f.updatedMs, f.leaderOnline, f.connected, f.active, f.ended];
  const ages: [number, number] = [f.updatedAgeMs, f.heardAgeMs];
  console.log(ages);
  const parsed: unknown = f.json();
  const marks = f.timing;
  if (marks) console.log(marks.seq, marks.applied - (marks.bytes ?? marks.applied));
  console.log(seq, ev, fl, parsed, f.name, l.name);
  f.disconnect();
  await l.stop();

  const key: string = await deriveKey("secret", "pw:", "00", 100000);
  const channel: string = await channelOf("00", "m");
  const opened: string | null = await openSealed("00", key, "n");
  const tag: string = await channelTag(channel);
  const sealed: string = await sealLead("00112233445566778899aabbccddeeff", "2ab3", "01", "full", "-", "-", 0, 37);
  console.log(tag, sealed);
  // @ts-expect-error: a publish is full or delta
  await sealLead("00", "00", "01", "other", "-", "-", 0, 37);
  const body: Uint8Array = frameBody(["a", new Uint8Array(1)]);
  const delta: Uint8Array = makeDelta(body, body);
  const applied: Uint8Array | null = applyDelta(body, delta);
  const sum: number = checksum(body);
  const h: bigint = rendezvous("stream:m", "http://127.0.0.1:7001");
  const limits: [string, number, number, number] = [PROTOCOL_VERSION, MAX_NAME, MAX_SECRET, MAX_STATE];
  const code: 11 = Status.MS_ERR_UNAVAILABLE;
  console.log(channel, opened, applied, sum, h, limits, code);

  // @ts-expect-error: a URL list is strings
  new Client([1, 2]);
  // @ts-expect-error: seq is read-only
  f.seq = 3;
  // @ts-expect-error: the key derivation takes "pw:" or "code:"
  await deriveKey("s", "other:", "00", 1);
  // @ts-expect-error: Status is frozen
  Status.MS_OK = 1;
  // @ts-expect-error: no such option
  new Client("http://h", { timeout: 5 });
}

// The repository README's embedding example.
export async function embedding(): Promise<void> {
  const client = new Client("https://view.example.org", { post: true });
  const follower = await client.follow("survey", "password", {
    onEvent(event) {
      if (event.kind === EventKind.MS_EVENT_STATE) {
        const plan = JSON.parse(event.data ?? "null");
        console.log(`seq ${event.seq}: ${plan.mission.items.length} mission items`);
      } else {
        console.log(event.kindName);
      }
    },
  });
  follower.disconnect();
}
