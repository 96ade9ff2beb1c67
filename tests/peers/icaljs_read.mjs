// Reads iCalendar objects with Mozilla's ical.js (the parser behind Thunderbird), as a
// client would: the VTIMEZONE embedded in each object, the recurrence expanded with its
// exceptions. In: a JSON array of iCalendar texts on stdin. Out: a JSON array, one entry per
// text: the METHOD and every VEVENT (times as Unix seconds, as ical.js reads them), and the
// occurrences of the recurring one (up to `limit`).
import { readFileSync } from "node:fs";
import { pathToFileURL } from "node:url";

const [, , libraryPath, limitText] = process.argv;
const ICAL = (await import(pathToFileURL(libraryPath).href)).default;
const limit = Number(limitText || "1000");

function unix(time) {
  return time ? time.toUnixTime() : null;
}

function read(text) {
  const calendar = new ICAL.Component(ICAL.parse(text));
  const vevents = calendar.getAllSubcomponents("vevent");
  const events = vevents.map((vevent) => {
    const event = new ICAL.Event(vevent);
    return {
      uid: event.uid,
      sequence: event.sequence,
      status: vevent.getFirstPropertyValue("status"),
      summary: event.summary,
      recurrence_id: unix(event.recurrenceId),
      start: unix(event.startDate),
      end: unix(event.endDate),
      start_tzid: vevent.getFirstProperty("dtstart").getParameter("tzid") || null,
      rrule: vevent.getFirstProperty("rrule") ? vevent.getFirstPropertyValue("rrule").toString() : null,
      exdates: vevent.getAllProperties("exdate").flatMap((p) => p.getValues().map(unix)),
      attendees: event.attendees.map((a) => a.getFirstValue().toLowerCase()),
    };
  });
  const masters = vevents.filter((v) => !v.hasProperty("recurrence-id") && v.hasProperty("rrule"));
  let occurrences = null;
  if (masters.length === 1) {
    const event = new ICAL.Event(masters[0], { strictExceptions: true });
    for (const other of vevents) {
      if (other.hasProperty("recurrence-id")) event.relateException(other);
    }
    occurrences = [];
    const iterator = event.iterator();
    let next;
    while (occurrences.length < limit && (next = iterator.next())) {
      const details = event.getOccurrenceDetails(next);
      occurrences.push([unix(details.recurrenceId), unix(details.startDate), unix(details.endDate)]);
    }
  }
  return { method: calendar.getFirstPropertyValue("method"), events, occurrences };
}

const texts = JSON.parse(readFileSync(0, "utf8"));
process.stdout.write(JSON.stringify(texts.map(read)));
