//! Representations, the video simulator and rendering.

use splitstream_events::render::{accumulate_rgb, write_png};
use splitstream_events::repr::{histogram, voxel_grid, PointCloudConfig, PointClouds, TimeSurface};
use splitstream_events::video::{DvsConfig, DvsSimulator};
use splitstream_events::Event;

#[test]
fn point_clouds_cover_sliding_windows_with_normalised_points() {
    let events: Vec<Event> = (0..10_000)
        .map(|i| Event::new(i * 100, (i % 128) as u16, (i % 64) as u16, i % 2 == 0))
        .collect();
    let cfg = PointCloudConfig {
        window_us: 100_000,
        stride_us: 50_000,
        points: 256,
        width: 128,
        height: 128,
        seed: 7,
        ..Default::default()
    };
    let mut clouds = PointClouds::new(cfg.clone());
    let mut out = Vec::new();
    for chunk in events.chunks(777) {
        clouds.push(chunk, &mut out);
    }
    clouds.finish(&mut out);
    // 1 s of events, windows every 50 ms.
    assert!((18..=21).contains(&out.len()), "{} windows", out.len());
    for c in &out[..out.len() - 1] {
        assert_eq!(c.points.len(), 256);
        assert_eq!(c.events_in_window, 1000);
        assert!(c.points.iter().all(|p| (0.0..1.0).contains(&p[0])
            && (0.0..1.0).contains(&p[1])
            && (0.0..1.0).contains(&p[2])));
        assert!(
            c.points.windows(2).all(|w| w[0][2] <= w[1][2]),
            "points in time order"
        );
    }
    // Same seed, same clouds.
    let mut again = PointClouds::new(cfg);
    let mut out2 = Vec::new();
    again.push(&events, &mut out2);
    again.finish(&mut out2);
    assert_eq!(out, out2);
}

#[test]
fn voxel_grid_splits_an_event_between_neighbouring_bins() {
    let events = [
        Event::new(0, 1, 0, true),
        Event::new(25, 1, 0, true),
        Event::new(100, 0, 1, false),
    ];
    let g = voxel_grid(&events, 5, 2, 2, 0, 100);
    // Event at t=25 lies at bin 1.0 exactly; event at t=0 in bin 0; t=100 in bin 4.
    assert_eq!(g[1], 1.0);
    assert_eq!(g[4 + 1], 1.0);
    assert_eq!(g[4 * 4 + 2], -1.0);
    let half = voxel_grid(&[Event::new(50, 0, 0, true)], 4, 1, 1, 0, 100);
    assert_eq!(half, vec![0.0, 0.5, 0.5, 0.0]);
}

#[test]
fn histogram_counts_each_polarity_in_its_channel() {
    let events = [
        Event::new(0, 1, 1, true),
        Event::new(1, 1, 1, true),
        Event::new(2, 0, 0, false),
        Event::new(3, 9, 9, true),
    ];
    let h = histogram(&events, 2, 2);
    assert_eq!(h, vec![1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 2.0]);
}

#[test]
fn time_surface_decays_with_age() {
    let mut ts = TimeSurface::new(2, 1);
    ts.update(&[Event::new(1000, 0, 0, true), Event::new(2000, 1, 0, false)]);
    let s = ts.render(2000, 1000.0);
    assert_eq!(s[1], 1.0); // OFF channel, pixel 1, age 0
    assert!((s[2] - (-1.0f32).exp()).abs() < 1e-6); // ON channel, pixel 0, age 1 tau
    assert_eq!(s[0], 0.0);
}

#[test]
fn a_brightening_pixel_fires_on_events_spread_over_the_interval() {
    let cfg = DvsConfig {
        threshold_sigma: 0.0,
        ..Default::default()
    };
    let mut sim = DvsSimulator::new(2, 1, cfg);
    let mut out = Vec::new();
    sim.push_frame(&[100.0, 100.0], 0, &mut out).expect("first");
    assert!(out.is_empty());
    // ln(100 * e^0.5) - ln(100) = 0.5: two ON crossings (0.2, 0.4) at 40% and 80%.
    let bright = 100.0 * 0.5f32.exp();
    sim.push_frame(&[bright, 100.0], 10_000, &mut out)
        .expect("second");
    assert_eq!(
        out,
        vec![Event::new(4_000, 0, 0, true), Event::new(8_000, 0, 0, true)]
    );
    out.clear();
    sim.push_frame(&[100.0, 100.0], 20_000, &mut out)
        .expect("third");
    assert!(out.iter().all(|e| !e.p) && out.len() == 2, "{out:?}");
}

#[test]
fn refractory_period_thins_bursts_and_seeds_reproduce_noise() {
    let cfg = DvsConfig {
        threshold_sigma: 0.0,
        refractory_us: 5_000,
        ..Default::default()
    };
    let mut sim = DvsSimulator::new(1, 1, cfg);
    let mut out = Vec::new();
    sim.push_frame(&[50.0], 0, &mut out).expect("first");
    sim.push_frame(&[250.0], 10_000, &mut out).expect("second");
    assert!(out.windows(2).all(|w| w[1].t - w[0].t >= 5_000), "{out:?}");
    let noisy = |seed| {
        let cfg = DvsConfig {
            shot_noise_rate_hz: 5.0,
            seed,
            ..Default::default()
        };
        let mut sim = DvsSimulator::new(64, 64, cfg);
        let mut out = Vec::new();
        let frame = vec![80.0; 64 * 64];
        for k in 0..10 {
            sim.push_frame(&frame, k * 33_333, &mut out).expect("frame");
        }
        out
    };
    let (a, b, c) = (noisy(1), noisy(1), noisy(2));
    assert!(!a.is_empty(), "5 Hz x 4096 px x 0.3 s should make noise");
    assert_eq!(a, b);
    assert_ne!(a, c);
}

#[test]
fn leak_makes_a_static_scene_fire_on_events() {
    let cfg = DvsConfig {
        leak_rate_hz: 10.0,
        threshold_sigma: 0.0,
        ..Default::default()
    };
    let mut sim = DvsSimulator::new(1, 1, cfg);
    let mut out = Vec::new();
    for k in 0..11 {
        sim.push_frame(&[120.0], k * 100_000, &mut out)
            .expect("frame");
    }
    // 10 thresholds per second for 1 s: about 10 ON events.
    assert!(
        (8..=11).contains(&out.len()) && out.iter().all(|e| e.p),
        "{}",
        out.len()
    );
}

#[test]
fn rendered_png_has_the_sensor_size() {
    let events = [Event::new(0, 3, 2, true), Event::new(0, 0, 0, false)];
    let rgb = accumulate_rgb(&events, 8, 4);
    assert_eq!(rgb.len(), 8 * 4 * 3);
    let on = &rgb[(2 * 8 + 3) * 3..][..3];
    assert!(
        on[2] > 150 && on[2] > on[0],
        "ON pixel is blue-white: {on:?}"
    );
    assert!(
        rgb[0] > 150 && rgb[0] > rgb[2],
        "OFF pixel is red: {:?}",
        &rgb[..3]
    );
    assert_eq!(&rgb[3..6], &[24, 24, 28], "quiet pixel is background");
    let path = std::env::temp_dir().join(format!("splitstream-render-{}.png", std::process::id()));
    write_png(&path, 8, 4, &rgb).expect("png");
    let bytes = std::fs::read(&path).expect("read back");
    std::fs::remove_file(&path).ok();
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
    assert_eq!(
        u32::from_be_bytes([bytes[16], bytes[17], bytes[18], bytes[19]]),
        8
    );
}
