use coseg::pseudo::{PseudoMaskParams, pseudo_masks};
#[test]
fn tune() {
    let data = std::path::Path::new(&std::env::var("DATA").unwrap()).to_path_buf();
    let variants: Vec<(String, Box<dyn Fn(&mut PseudoMaskParams)>)> = vec![
        ("default".into(), Box::new(|_| {})),
        ("original".into(), Box::new(|p| { p.grabcut.shape_prior = 0.0; p.grabcut.gamma = 50.0; })),
        ("p16 g5".into(), Box::new(|p| { p.grabcut.shape_prior = 16.0; p.grabcut.gamma = 5.0; })),
        ("p32 g10".into(), Box::new(|p| { p.grabcut.shape_prior = 32.0; p.grabcut.gamma = 10.0; })),
    ];
    for (name, f) in variants {
        let mut p = PseudoMaskParams::default();
        f(&mut p);
        let s = pseudo_masks(&data, &std::env::temp_dir().join("zz_tune_out"), &p).unwrap();
        let q = s.quality.unwrap();
        eprintln!("{name:14} pseudo {:.4} ± {:.3}  ellipse {:.4}  cpu {:.1}s", q.pseudo.metrics.dice.mean, q.pseudo.metrics.dice.std, q.ellipse.metrics.dice.mean, s.seconds);
    }
}
