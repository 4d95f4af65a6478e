// QGroundControl .plan survey plans for the tests (the structure of
// tests/common/plan.rs): a takeoff, a lawnmower survey of n waypoints with
// camera triggers, a geofence (a circle and an exclusion polygon) and rally
// points.
const ROW = 20;
const r7 = (x) => Math.round(x * 1e7) / 1e7;
const item = (id, command, alt, params, lat, lon) => ({
  AMSLAltAboveTerrain: null, Altitude: alt, AltitudeMode: 1, autoContinue: true, command, doJumpId: id,
  frame: 3, params: [...params, lat, lon, alt], type: "SimpleItem",
});
const camera = (id, dist) => ({ autoContinue: true, command: 206, doJumpId: id, frame: 2, params: [dist, 0, 1, 0, 0, 0, 0], type: "SimpleItem" });

export function surveyPlan(n, seed = 7) {
  const lat0 = 47.3977 + (seed % 1000) * 1e-5;
  const lon0 = 8.5456;
  const items = [item(1, 22, 50, [15, 0, 0, 0], lat0, lon0)];
  let jump = 2;
  for (let i = 0; i < n; i++) {
    const row = Math.floor(i / ROW), col = i % ROW;
    if (col === 0) items.push(camera(jump++, 25));
    const x = row % 2 === 0 ? col : ROW - 1 - col;
    items.push(item(jump++, 16, 60, [0, 0, 0, 0], r7(lat0 + row * 0.00027), r7(lon0 + x * 0.00041)));
    if (col === ROW - 1 || i === n - 1) items.push(camera(jump++, 0));
  }
  return {
    fileType: "Plan",
    geoFence: {
      circles: [{ circle: { center: [lat0, lon0], radius: 850.5 }, inclusion: true, version: 1 }],
      polygons: [{ inclusion: false, polygon: [[lat0 + 0.002, lon0 + 0.002], [lat0 + 0.002, lon0 + 0.004], [lat0 + 0.004, lon0 + 0.004], [lat0 + 0.004, lon0 + 0.002]], version: 1 }],
      version: 2,
    },
    groundStation: "QGroundControl",
    mission: { cruiseSpeed: 15, firmwareType: 12, globalPlanAltitudeMode: 1, hoverSpeed: 5, items, plannedHomePosition: [lat0, lon0, 488.1], vehicleType: 2, version: 2 },
    rallyPoints: { points: [[lat0 - 0.001, lon0 - 0.001, 50], [lat0 + 0.001, lon0 - 0.002, 50]], version: 2 },
    version: 1,
  };
}

/** Moves waypoint item `k` (a deterministic drag) and changes its altitude. */
export function dragWaypoint(plan, step) {
  const wps = plan.mission.items.filter((it) => it.command === 16);
  const wp = wps[(step * 7) % wps.length];
  wp.params[4] = r7(wp.params[4] + 0.00005 * ((step % 3) - 1 || 1));
  wp.params[5] = r7(wp.params[5] + 0.00003);
  wp.Altitude = 40 + (step % 50);
  wp.params[6] = wp.Altitude;
  return plan;
}
