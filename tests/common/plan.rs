//! QGroundControl-format survey plans (`.plan` JSON as QGroundControl
//! saves it, indented by 4) for tests and the benchmark: a takeoff, a
//! lawnmower survey of `n` waypoints with a camera trigger (DO_SET_CAM_TRIGG_DIST)
//! at the start of every row and off at the end, a geofence (a circle and
//! an exclusion polygon) and rally points. The same structure as
//! `qgc_plan` of bindings/python/tests/test_cli_plan.py.
#![allow(dead_code)]

use serde_json::{json, Value};

/// Waypoints per survey row.
const ROW: usize = 20;

pub struct Plan {
    doc: Value,
    /// Index in `mission.items` of each waypoint.
    waypoints: Vec<usize>,
}

impl Plan {
    /// A survey of `n` waypoints; `seed` varies its origin.
    pub fn survey(n: usize, seed: u64) -> Plan {
        let lat0 = 47.3977 + (seed % 1000) as f64 * 1e-5;
        let lon0 = 8.5456;
        let mut items = vec![item(1, 22, 50.0, [15.0, 0.0, 0.0], lat0, lon0)];
        let mut waypoints = Vec::with_capacity(n);
        let mut jump = 2;
        for i in 0..n {
            let (row, col) = (i / ROW, i % ROW);
            if col == 0 {
                // Camera: trigger every 25 m along the row.
                items.push(camera(jump, 25.0));
                jump += 1;
            }
            let x = if row % 2 == 0 { col } else { ROW - 1 - col };
            let lat = round7(lat0 + row as f64 * 0.00027);
            let lon = round7(lon0 + x as f64 * 0.00041);
            waypoints.push(items.len());
            items.push(item(jump, 16, 60.0, [0.0, 0.0, 0.0], lat, lon));
            jump += 1;
            if col == ROW - 1 || i == n - 1 {
                items.push(camera(jump, 0.0));
                jump += 1;
            }
        }
        let doc = json!({
            "fileType": "Plan",
            "geoFence": {
                "circles": [{"circle": {"center": [lat0, lon0], "radius": 850.5}, "inclusion": true, "version": 1}],
                "polygons": [{
                    "inclusion": false,
                    "polygon": [[lat0 + 0.002, lon0 + 0.002], [lat0 + 0.002, lon0 + 0.004],
                                [lat0 + 0.004, lon0 + 0.004], [lat0 + 0.004, lon0 + 0.002]],
                    "version": 1
                }],
                "version": 2
            },
            "groundStation": "QGroundControl",
            "mission": {
                "cruiseSpeed": 15,
                "firmwareType": 12,
                "globalPlanAltitudeMode": 1,
                "hoverSpeed": 5,
                "items": items,
                "plannedHomePosition": [lat0, lon0, 488.1],
                "vehicleType": 2,
                "version": 2
            },
            "rallyPoints": {"points": [[lat0 - 0.001, lon0 - 0.001, 50], [lat0 + 0.001, lon0 - 0.002, 50]], "version": 2},
            "version": 1
        });
        Plan { doc, waypoints }
    }

    /// A survey whose text is about `bytes` long.
    pub fn of_size(bytes: usize, seed: u64) -> Plan {
        // ~ 490 bytes per waypoint, its camera items included.
        let per = Plan::survey(100, seed).text().len() / 100;
        Plan::survey((bytes / per).max(1), seed)
    }

    pub fn waypoints(&self) -> usize {
        self.waypoints.len()
    }

    /// Moves waypoint `i` by (dlat, dlon) degrees, as dragging it does.
    pub fn move_waypoint(&mut self, i: usize, dlat: f64, dlon: f64) {
        let at = self.waypoints[i % self.waypoints.len()];
        let p = &mut self.doc["mission"]["items"][at]["params"];
        let lat = p[4].as_f64().unwrap();
        let lon = p[5].as_f64().unwrap();
        p[4] = json!(round7(lat + dlat));
        p[5] = json!(round7(lon + dlon));
    }

    /// The plan as QGroundControl saves it: indented by 4, a final newline.
    pub fn text(&self) -> String {
        use serde::Serialize;
        let mut out = Vec::new();
        let fmt = serde_json::ser::PrettyFormatter::with_indent(b"    ");
        let mut ser = serde_json::Serializer::with_formatter(&mut out, fmt);
        self.doc.serialize(&mut ser).unwrap();
        out.push(b'\n');
        String::from_utf8(out).unwrap()
    }

    pub fn doc(&self) -> &Value {
        &self.doc
    }
}

fn round7(v: f64) -> f64 {
    (v * 1e7).round() / 1e7
}

fn item(jump: usize, command: u32, alt: f64, p: [f64; 3], lat: f64, lon: f64) -> Value {
    json!({
        "AMSLAltAboveTerrain": null,
        "Altitude": alt,
        "AltitudeMode": 1,
        "autoContinue": true,
        "command": command,
        "doJumpId": jump,
        "frame": 3,
        "params": [p[0], p[1], p[2], null, lat, lon, alt],
        "type": "SimpleItem"
    })
}

/// MAV_CMD_DO_SET_CAM_TRIGG_DIST (206): trigger every `distance` m (0: off).
fn camera(jump: usize, distance: f64) -> Value {
    json!({
        "autoContinue": true,
        "command": 206,
        "doJumpId": jump,
        "frame": 2,
        "params": [distance, 0, 1, 0, 0, 0, 0],
        "type": "SimpleItem"
    })
}
